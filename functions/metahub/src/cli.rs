//! The command line (README, "More of the command line"; `metahub --help`). Every flag also reads a `METAHUB_*`
//! environment variable.

use crate::{admin_ui, credential_provider, detect, explain, index, manage, pins, serve};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(name = "metahub", version, about = "A registry front that serves every machine the image built for it")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct StoreArg {
    /// `file:PATH` (embedded, the default) or `dynamodb:TABLE` (region, credentials and AWS_ENDPOINT_URL from the
    /// standard AWS environment).
    #[arg(long, env = "METAHUB_STORE", default_value_t = crate::store::default_spec())]
    pub store: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve /v2/ and /token on one machine (boxed: its many flags make it the largest command).
    Serve(Box<serve::ServeArgs>),
    /// Define the machine types accounts pull as.
    #[command(subcommand)]
    MachineType(manage::MachineTypeCommand),
    /// The logins machines use, each with its machine type.
    #[command(subcommand)]
    Account(manage::AccountCommand),
    /// The audit log of machine type and account changes: who, what, when; newest first.
    Changes(manage::ChangesArgs),
    /// The store itself.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The operators' web page.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The features of this host, as a ready `machine-type put` line.
    Detect(detect::DetectArgs),
    /// Every entry of an image's index for a machine type: fits or not, why, and the one served.
    Explain(explain::ExplainArgs),
    /// The digest every machine type is served for an image, and the build its clients take: pins per node pool.
    Pins(pins::PinsArgs),
    /// Assemble per-microarchitecture images into one index with features, or inspect one.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// A kubelet image credential provider: reads a CredentialProviderRequest on stdin, writes the node pool's
    /// MetaHub account as a CredentialProviderResponse on stdout (see docs/nodes.md).
    CredentialProvider(credential_provider::CredentialProviderArgs),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Open the admin page of a MetaHub through a proxy on 127.0.0.1 that authenticates every request with your
    /// credentials (SigV4 for the admin function in AWS, or METAHUB_ADMIN_SECRET); prints the address to open.
    Ui(admin_ui::UiArgs),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Create the DynamoDB table (a no-op for the embedded store, which creates itself).
    Init(StoreArg),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::MachineType(cmd) => manage::machine_type(cmd).await,
        Command::Account(cmd) => manage::account(cmd).await,
        Command::Changes(args) => manage::changes(args).await,
        Command::Store(StoreCommand::Init(arg)) => crate::store::init(&arg.store).await,
        Command::Admin(AdminCommand::Ui(args)) => admin_ui::run(args).await,
        Command::Detect(args) => detect::run(args).await,
        Command::Explain(args) => explain::run(args).await,
        Command::Pins(args) => pins::run(args).await,
        Command::Index(cmd) => index::run(cmd).await,
        Command::CredentialProvider(args) => credential_provider::run(args).await,
    }
}

pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}
