use readygate::cli::Command;

fn main() -> anyhow::Result<std::process::ExitCode> {
    // First thing: rustls cannot pick between providers on its own and would panic later.
    readygate::install_crypto_provider();
    // Also installed as `kubectl-readygate`, so that `kubectl readygate status` works.
    let cli = readygate::cli::parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve(_) => readygate::app::init_logging(cli.log_format),
        _ => readygate::app::init_cli_logging(),
    }
    let code = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(readygate::app::run(cli.command))?;
    Ok(std::process::ExitCode::from(
        u8::try_from(code).unwrap_or(1),
    ))
}
