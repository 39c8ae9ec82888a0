//! `machine-type`, `account` and `changes`: the operator's commands, against the store directly (`--store`) or a
//! running MetaHub's admin API (`--endpoint`). Both are an [`AdminPort`], so every command has one code path; this
//! module only parses, calls and prints.

use crate::admin_client::AdminApiClient;
use crate::cli::StoreArg;
use anyhow::Context;
use clap::{Args, Subcommand};
use metahub_core::admin::{AdminPort, AdminService, NewAccount, NewPassword};
use metahub_core::machine::{MachineType, MatchMode};
use metahub_core::ports::{Account, Change};
use metahub_core::{Error, ErrorCode, Secret};
use std::io::Read;

/// Where an admin command applies: the store, or the admin API when `--endpoint` is given.
#[derive(Args, Clone)]
pub struct AdminTarget {
    #[command(flatten)]
    store: StoreArg,
    /// A running MetaHub's admin API (e.g. `http://127.0.0.1:5000` of `metahub serve --admin-secret-file`) instead
    /// of the store; authenticated with METAHUB_ADMIN_SECRET when set, else SigV4-signed with the standard AWS
    /// credentials (the admin Function URL of a deployed stack).
    #[arg(long, env = "METAHUB_ADMIN_ENDPOINT")]
    endpoint: Option<String>,
}

impl AdminTarget {
    /// The admin API's client, or the use cases on the store with changes recorded as `cli:<user>`.
    async fn open(&self) -> anyhow::Result<Box<dyn AdminPort>> {
        match self.endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(endpoint) => Ok(Box::new(AdminApiClient::new(endpoint).await?)),
            None => {
                let who = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
                Ok(Box::new(AdminService::new(crate::store::open(&self.store.store).await?, who)))
            }
        }
    }
}

/// A name that does not exist, said as the commands always said it: the message alone.
fn absent(e: Error) -> anyhow::Error {
    match e.code {
        ErrorCode::NameUnknown => anyhow::anyhow!(e.message),
        _ => e.into(),
    }
}

#[derive(Subcommand)]
pub enum MachineTypeCommand {
    /// Create or replace a machine type.
    Put {
        name: String,
        /// `cpu:<archspec name>`, `nvcap:<major>.<minor>` or any `key:value`; repeat for several.
        #[arg(long = "feature")]
        features: Vec<String>,
        /// `best` (the most specific build the machine runs), `exact` (features equal the machine's), or
        /// `unfiltered` (the whole index: for resolvers such as admission controllers and GitOps tools, never nodes).
        #[arg(long = "match", default_value = "best")]
        match_mode: MatchMode,
        #[command(flatten)]
        target: AdminTarget,
    },
    Get {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a machine type; refused while accounts use it.
    Delete {
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Create an account or replace its machine type and password (read from standard input).
    Put {
        login: String,
        #[arg(long)]
        machine_type: String,
        /// Only repositories under this prefix may be pulled (`org/`, `org/app`); repeatable. None: every repository.
        #[arg(long = "repository", value_name = "PREFIX")]
        repositories: Vec<String>,
        /// Read the password from standard input (the only way: it never appears in shell history or `ps`).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    Delete {
        login: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Give an existing account a new password (read from standard input), keeping its machine type.
    RotatePassword {
        login: String,
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// The audit log: who changed what, when; newest first.
#[derive(Args)]
pub struct ChangesArgs {
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: AdminTarget,
}

fn machine_type_line(mt: &MachineType) -> String {
    format!("{:<24} {:<6} {}", mt.name(), mt.match_mode(), mt.features().join(" "))
}

/// The password on standard input; hashed before it leaves this process (the API only ever sees the hash).
fn password_from_stdin() -> anyhow::Result<NewPassword> {
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password).context("reading the password from standard input")?;
    Ok(NewPassword::Plain(Secret::new(password.trim_end_matches(['\n', '\r']).to_owned())))
}

pub async fn machine_type(command: MachineTypeCommand) -> anyhow::Result<()> {
    match command {
        MachineTypeCommand::Put { name, features, match_mode, target } => {
            let mt = MachineType::new(name.as_str(), features, match_mode)?;
            let mt = target.open().await?.put_machine_type(mt).await?;
            println!("machine type {} = [{}] ({})", mt.name(), mt.features().join(", "), mt.match_mode());
        }
        MachineTypeCommand::Get { name, json, target } => {
            let mt = target.open().await?.machine_type(&name.parse()?).await.map_err(absent)?;
            if json {
                println!("{}", mt.to_json());
            } else {
                println!("{}", machine_type_line(&mt));
            }
        }
        MachineTypeCommand::List { json, target } => {
            let all = target.open().await?.machine_types().await?;
            if json {
                println!("{}", serde_json::Value::from(all.iter().map(MachineType::to_json).collect::<Vec<_>>()));
            } else {
                println!("{:<24} {:<6} FEATURES", "NAME", "MATCH");
                all.iter().for_each(|mt| println!("{}", machine_type_line(mt)));
            }
        }
        MachineTypeCommand::Delete { name, target } => {
            target.open().await?.delete_machine_type(&name.parse()?).await.map_err(absent)?;
            println!("deleted machine type {name}");
        }
    }
    Ok(())
}

pub async fn account(command: AccountCommand) -> anyhow::Result<()> {
    match command {
        AccountCommand::Put { login, machine_type, repositories, password_stdin: _, target } => {
            let account = NewAccount {
                login: login.parse()?,
                machine_type: machine_type.parse()?,
                password: password_from_stdin()?,
                repositories,
            };
            let account = target.open().await?.put_account(account).await?;
            println!("account {} pulls as machine type {}", account.login, account.machine_type);
        }
        AccountCommand::List { json, target } => {
            let all = target.open().await?.accounts().await?;
            if json {
                let items: Vec<_> = all.iter().map(Account::to_json).collect();
                println!("{}", serde_json::Value::from(items));
            } else {
                println!("{:<32} {:<24} REPOSITORIES", "LOGIN", "MACHINE TYPE");
                for a in &all {
                    let repositories =
                        if a.repositories.is_empty() { "*".to_owned() } else { a.repositories.join(",") };
                    println!("{:<32} {:<24} {repositories}", a.login, a.machine_type);
                }
            }
        }
        AccountCommand::Delete { login, target } => {
            target.open().await?.delete_account(&login.parse()?).await.map_err(absent)?;
            println!("deleted account {login}");
        }
        AccountCommand::RotatePassword { login, password_stdin: _, target } => {
            let login = login.parse()?;
            let password = password_from_stdin()?;
            target.open().await?.rotate_password(&login, password).await.map_err(absent)?;
            println!("account {login} has a new password");
        }
    }
    Ok(())
}

pub async fn changes(args: ChangesArgs) -> anyhow::Result<()> {
    let all = args.target.open().await?.changes(args.limit).await?;
    if args.json {
        println!("{}", serde_json::Value::from(all.iter().map(Change::to_json).collect::<Vec<_>>()));
    } else {
        println!("{:<20}  {:<24} {:<20} TARGET", "TIME", "WHO", "ACTION");
        for c in &all {
            println!("{:<20}  {:<24} {:<20} {}", c.time(), c.who, c.action, c.target);
        }
    }
    Ok(())
}
