pub async fn run(_g: &super::GlobalArgs, _c: super::Command) -> anyhow::Result<std::process::ExitCode> { anyhow::bail!("not yet") }
