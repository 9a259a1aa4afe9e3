//! The command line: `serve` (default), `migrate`, `token`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::auth::{mint_token, Role};
use crate::config::Settings;

#[derive(Parser)]
#[command(
    name = "mixroom-realtime",
    version,
    about = "Mixroom real-time messaging server"
)]
pub struct Cli {
    /// A TOML file layered over config/default.toml.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the effective configuration (defaults, file, environment) as
    /// TOML, with secrets redacted.
    Config,
    /// Print a token signed with the configured secret, for trying the server by hand.
    Token {
        #[arg(long)]
        user: uuid::Uuid,
        /// client, studio_owner, engineer or admin
        #[arg(long, default_value = "client")]
        role: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings.log);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            if let Err(code) = check_environment(&settings) {
                return code;
            }
            actix_rt::System::new().block_on(crate::app::serve(settings))
        }
        Command::Config => {
            print!("{}", settings.to_redacted_toml());
            Ok(())
        }
        Command::Migrate => {
            // The same refusals as `serve` (a plaintext database URL, dev
            // secrets): a production migration is a production connection.
            if let Err(code) = check_environment(&settings) {
                return code;
            }
            actix_rt::System::new().block_on(async {
                let applied = crate::db::Db::migrate(&settings.database.url).await?;
                println!("applied {} migration(s)", applied.len());
                Ok(())
            })
        }
        Command::Token {
            user,
            role,
            name,
            email,
            ttl,
        } => token(&settings, user, &role, name, email, ttl),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "fatal");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Production refuses every development-only value, one line per key,
/// before anything listens; development names them as warnings.
fn check_environment(settings: &Settings) -> Result<(), ExitCode> {
    let problems = settings.production_problems();
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("error: server.environment is production but {problem}");
        }
        eprintln!("error: refusing to start; see README.md, \"Going to production\"");
        return Err(ExitCode::from(2));
    }
    for value in settings.development_values() {
        tracing::warn!("development only: {value}");
    }
    Ok(())
}

fn token(
    settings: &Settings,
    user: uuid::Uuid,
    role: &str,
    name: Option<String>,
    email: Option<String>,
    ttl: i64,
) -> anyhow::Result<()> {
    let role = Role::parse(role).ok_or_else(|| {
        anyhow::anyhow!("unknown role `{role}` (client, studio_owner, engineer, admin)")
    })?;
    let token = mint_token(
        &settings.auth.jwt_secret,
        &user.to_string(),
        role,
        name.as_deref(),
        email.as_deref(),
        ttl,
    )?;
    println!("{token}");
    Ok(())
}
