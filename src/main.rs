use clap::Parser;

fn main() -> anyhow::Result<()> {
    // First thing: rustls cannot pick between providers on its own and would panic later.
    readygate::install_crypto_provider();
    let cli = readygate::cli::Cli::parse();
    readygate::app::init_logging(cli.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(readygate::app::run(cli.command))
}
