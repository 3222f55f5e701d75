//! The writer: heartbeat UPDATEs on every primary, each announced as a `heartbeat-set` record.

use millilag_core::shutdown::Shutdown;
use millilag_core::Config;

pub async fn run(_config: Config, _shutdown: Shutdown) -> anyhow::Result<()> {
    anyhow::bail!("the writer is not implemented yet (issue 3)")
}
