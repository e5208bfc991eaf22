//! The `ferrobase` command: parses arguments, then calls the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ferrobase::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "ferrobase",
    version,
    about = "Backend-as-a-service in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Apply database migrations and exit (they also run at start).
    Migrate(CommonArgs),
    /// Manage console administrators.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Work with access rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Run a file of rule tests (`[[case]]` tables); exits non-zero when one fails.
    ///
    /// A case names a `rule`, or a `collection` and `operation` whose rule is read from the
    /// configuration (ferrobase.toml), and gives `auth`, `doc`, `new`, `request` and
    /// `expect = "allow"` or `"deny"`.
    Test {
        file: PathBuf,
        /// Configuration file declaring the collections (default: ./ferrobase.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an administrator (prompts for the password unless --password is given).
    Create {
        email: String,
        #[arg(long)]
        password: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Args)]
struct CommonArgs {
    /// Configuration file (default: ./ferrobase.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data folder for the embedded database and generated keys.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run on Postgres: postgres://user@host/db.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on (default 127.0.0.1:8090).
    #[arg(long)]
    http: Option<String>,
    /// The service key (default: generated on first start and printed once).
    #[arg(long)]
    service_key: Option<String>,
    /// Folder of cloud-code functions.
    #[arg(long)]
    functions_dir: Option<PathBuf>,
    /// Development mode.
    #[arg(long)]
    dev: bool,
    /// Store objects in this S3 bucket instead of the data folder.
    #[arg(long)]
    s3_bucket: Option<String>,
    /// S3 endpoint URL (default: AWS for the region).
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long)]
    s3_region: Option<String>,
    /// Address the S3 bucket by path (MinIO and most self-hosted S3).
    #[arg(long)]
    s3_path_style: bool,
    /// Redirect downloads to short-lived presigned S3 URLs.
    #[arg(long)]
    s3_presign_downloads: bool,
}

fn overrides(common: CommonArgs) -> Overrides {
    Overrides {
        config: common.config,
        data_dir: common.data_dir,
        database_url: common.database_url,
        ..Overrides::default()
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let config = Config::load(&Overrides {
                    http: args.http,
                    service_key: args.service_key,
                    functions_dir: args.functions_dir,
                    dev: args.dev,
                    s3_bucket: args.s3_bucket,
                    s3_endpoint: args.s3_endpoint,
                    s3_region: args.s3_region,
                    s3_path_style: args.s3_path_style,
                    s3_presign_downloads: args.s3_presign_downloads,
                    ..overrides(args.common)
                })?;
                ferrobase::telemetry::init_logging(&config.log);
                let addr = config.http_addr()?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                ferrobase::serve(config, listener, shutdown_signal()).await
            }
            Command::Admin {
                command:
                    AdminCommand::Create {
                        email,
                        password,
                        common,
                    },
            } => {
                let config = Config::load(&overrides(common))?;
                ferrobase::telemetry::init_logging(&config.log);
                let password = match password {
                    Some(p) => p,
                    None => rpassword::prompt_password(format!("Password for {email}: "))
                        .context("reading the password")?,
                };
                let id = ferrobase::auth::create_admin(&config, &email, &password).await?;
                println!("ferrobase: created admin {email} ({id})");
                Ok(())
            }
            Command::Rules {
                command: RulesCommand::Test { file, config },
            } => {
                let config = Config::load(&Overrides {
                    config,
                    ..Overrides::default()
                })?;
                let (passed, total) = ferrobase::rules::run_test_file(&config, &file)?;
                if passed == total {
                    println!("ferrobase: {passed} of {total} rule tests passed");
                    Ok(())
                } else {
                    anyhow::bail!("{} of {total} rule tests failed", total - passed)
                }
            }
            Command::Migrate(args) => {
                let config = Config::load(&overrides(args))?;
                ferrobase::telemetry::init_logging(&config.log);
                let kind = ferrobase::store::Store::migrate_only(&config.store_options())
                    .await
                    .context("applying migrations")?;
                println!("ferrobase: migrations applied ({})", kind.name());
                Ok(())
            }
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
