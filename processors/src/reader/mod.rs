//! The reader: consumes `heartbeat-set`, times visibility on every replica, emits `replica-delay`.

use millilag_core::shutdown::Shutdown;
use millilag_core::Config;

pub async fn run(_config: Config, _shutdown: Shutdown) -> anyhow::Result<()> {
    anyhow::bail!("the reader is not implemented yet (issue 4)")
}
