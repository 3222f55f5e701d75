//! The processor: windows `replica-delay` records, writes sinks, evaluates alerts.

use millilag_core::shutdown::Shutdown;
use millilag_core::Config;

pub async fn run(_config: Config, _shutdown: Shutdown) -> anyhow::Result<()> {
    anyhow::bail!("the processor is not implemented yet (issue 5)")
}
