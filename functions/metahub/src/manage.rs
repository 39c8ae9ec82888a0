//! `machine-type`, `account` and `changes`: the operator's commands, against the store directly (`--store`) or a
//! running MetaHub's admin API (`--endpoint`). Both are a [`Store`], so every command has one code path.

use crate::admin_client::AdminApiStore;
use crate::cli::StoreArg;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use metahub_core::machine::{MachineType, MatchMode};
use metahub_core::password::hash_password;
use metahub_core::ports::{Account, AccountChange, Change, Store};
use serde_json::json;
use std::io::Read;
use std::sync::Arc;

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

enum Admin {
    Store(Arc<dyn Store>),
    Api(AdminApiStore),
}

impl Admin {
    async fn open(target: &AdminTarget) -> anyhow::Result<Admin> {
        match target.endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(endpoint) => Ok(Admin::Api(AdminApiStore::new(endpoint).await?)),
            None => Ok(Admin::Store(crate::store::open(&target.store.store).await?)),
        }
    }

    fn store(&self) -> &dyn Store {
        match self {
            Admin::Store(store) => store.as_ref(),
            Admin::Api(api) => api,
        }
    }

    /// Records a change made on the store directly; through the API the server records it with its principal.
    async fn record(&self, action: &str, target: String) -> anyhow::Result<()> {
        let who = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
        let change = Change { at: metahub_core::token::now_seconds(), who, action: action.to_owned(), target };
        self.store().record_change(&change).await.context("the change was applied, but recording it failed")
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
    format!("{:<24} {:<6} {}", mt.name, mt.match_mode, mt.features.join(" "))
}

/// The hash of the password on standard input; hashed here, so the API never sees the password.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password).context("reading the password from standard input")?;
    Ok(hash_password(password.trim_end_matches(['\n', '\r']))?)
}

pub async fn machine_type(command: MachineTypeCommand) -> anyhow::Result<()> {
    match command {
        MachineTypeCommand::Put { name, features, match_mode, target } => {
            let mt = MachineType::new(&name, features, match_mode)?;
            let admin = Admin::open(&target).await?;
            admin.store().put_machine_type(&mt).await?;
            let features = mt.features.join(",");
            admin.record("put-machine-type", format!("{} [{features}] {}", mt.name, mt.match_mode)).await?;
            println!("machine type {} = [{}] ({})", mt.name, mt.features.join(", "), mt.match_mode);
        }
        MachineTypeCommand::Get { name, json, target } => {
            let Some(mt) = Admin::open(&target).await?.store().machine_type(&name).await? else {
                bail!("no machine type {name:?}");
            };
            if json {
                println!("{}", mt.to_json());
            } else {
                println!("{}", machine_type_line(&mt));
            }
        }
        MachineTypeCommand::List { json, target } => {
            let all = Admin::open(&target).await?.store().list_machine_types().await?;
            if json {
                println!("{}", serde_json::Value::from(all.iter().map(MachineType::to_json).collect::<Vec<_>>()));
            } else {
                println!("{:<24} {:<6} FEATURES", "NAME", "MATCH");
                all.iter().for_each(|mt| println!("{}", machine_type_line(mt)));
            }
        }
        MachineTypeCommand::Delete { name, target } => {
            let admin = Admin::open(&target).await?;
            if !admin.store().delete_machine_type(&name).await? {
                bail!("no machine type {name:?}");
            }
            admin.record("delete-machine-type", name.clone()).await?;
            println!("deleted machine type {name}");
        }
    }
    Ok(())
}

pub async fn account(command: AccountCommand) -> anyhow::Result<()> {
    match command {
        AccountCommand::Put { login, machine_type, repositories, password_stdin: _, target } => {
            metahub_core::machine::validate_name("login", &login)?;
            for prefix in &repositories {
                metahub_core::ports::validate_repository_prefix(prefix)?;
            }
            let account = Account {
                login: login.clone(),
                machine_type: machine_type.clone(),
                password_hash: password_from_stdin()?,
                repositories,
            };
            let admin = Admin::open(&target).await?;
            admin.store().put_account(&account).await?;
            admin.record("put-account", format!("{login} machineType={machine_type}")).await?;
            println!("account {login} pulls as machine type {machine_type}");
        }
        AccountCommand::List { json, target } => {
            let all = Admin::open(&target).await?.store().list_accounts().await?;
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
            let admin = Admin::open(&target).await?;
            if !admin.store().delete_account(&login).await? {
                bail!("no account {login:?}");
            }
            admin.record("delete-account", login.clone()).await?;
            println!("deleted account {login}");
        }
        AccountCommand::RotatePassword { login, password_stdin: _, target } => {
            metahub_core::machine::validate_name("login", &login)?;
            let hash = password_from_stdin()?;
            match Admin::open(&target).await? {
                // One request: the server checks the account exists and records the rotation.
                Admin::Api(api) => api.rotate_password(&login, &hash).await?,
                admin @ Admin::Store(_) => {
                    let change = AccountChange::PasswordHash(hash);
                    if admin.store().update_account(&login, &change).await?.is_none() {
                        bail!("no account {login:?}");
                    }
                    admin.record("rotate-password", login.clone()).await?;
                }
            }
            println!("account {login} has a new password");
        }
    }
    Ok(())
}

fn change_time(c: &Change) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.at)).to_string()
}

pub async fn changes(args: ChangesArgs) -> anyhow::Result<()> {
    if !(1..=1000).contains(&args.limit) {
        bail!("--limit must be from 1 to 1000");
    }
    let all = Admin::open(&args.target).await?.store().changes(args.limit).await?;
    if args.json {
        let items: Vec<_> = all
            .iter()
            .map(|c| json!({"at": c.at, "time": change_time(c), "who": c.who, "action": c.action, "target": c.target}))
            .collect();
        println!("{}", serde_json::Value::from(items));
    } else {
        println!("{:<20}  {:<24} {:<20} TARGET", "TIME", "WHO", "ACTION");
        for c in &all {
            println!("{:<20}  {:<24} {:<20} {}", change_time(c), c.who, c.action, c.target);
        }
    }
    Ok(())
}
