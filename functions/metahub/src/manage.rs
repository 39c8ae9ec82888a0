//! `machine-type` and `account`: the operator's commands against the store.

use crate::cli::StoreArg;
use anyhow::{Context, bail};
use clap::Subcommand;
use metahub_core::machine::{MachineType, MatchMode};
use metahub_core::password::hash_password;
use metahub_core::ports::Account;
use serde_json::json;
use std::io::Read;

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
        store: StoreArg,
    },
    Get {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete a machine type; refused while accounts use it.
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Create an account or replace its machine type and password (read from standard input).
    Put {
        login: String,
        #[arg(long)]
        machine_type: String,
        /// Read the password from standard input (the only way: it never appears in shell history or `ps`).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    Delete {
        login: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

fn machine_type_json(mt: &MachineType) -> serde_json::Value {
    json!({"name": mt.name, "features": mt.features, "match": mt.match_mode.to_string()})
}

fn machine_type_line(mt: &MachineType) -> String {
    format!("{:<24} {:<6} {}", mt.name, mt.match_mode, mt.features.join(" "))
}

pub async fn machine_type(command: MachineTypeCommand) -> anyhow::Result<()> {
    match command {
        MachineTypeCommand::Put { name, features, match_mode, store } => {
            let mt = MachineType::new(&name, features, match_mode)?;
            crate::store::open(&store.store).await?.put_machine_type(&mt).await?;
            println!("machine type {} = [{}] ({})", mt.name, mt.features.join(", "), mt.match_mode);
        }
        MachineTypeCommand::Get { name, json, store } => {
            let Some(mt) = crate::store::open(&store.store).await?.machine_type(&name).await? else {
                bail!("no machine type {name:?}");
            };
            if json {
                println!("{}", machine_type_json(&mt));
            } else {
                println!("{}", machine_type_line(&mt));
            }
        }
        MachineTypeCommand::List { json, store } => {
            let all = crate::store::open(&store.store).await?.list_machine_types().await?;
            if json {
                println!("{}", serde_json::Value::from(all.iter().map(machine_type_json).collect::<Vec<_>>()));
            } else {
                println!("{:<24} {:<6} FEATURES", "NAME", "MATCH");
                all.iter().for_each(|mt| println!("{}", machine_type_line(mt)));
            }
        }
        MachineTypeCommand::Delete { name, store } => {
            if !crate::store::open(&store.store).await?.delete_machine_type(&name).await? {
                bail!("no machine type {name:?}");
            }
            println!("deleted machine type {name}");
        }
    }
    Ok(())
}

pub async fn account(command: AccountCommand) -> anyhow::Result<()> {
    match command {
        AccountCommand::Put { login, machine_type, password_stdin: _, store } => {
            metahub_core::machine::validate_name("login", &login)?;
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password).context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']);
            let account = Account { login: login.clone(), machine_type: machine_type.clone(), password_hash: hash_password(password)? };
            crate::store::open(&store.store).await?.put_account(&account).await?;
            println!("account {login} pulls as machine type {machine_type}");
        }
        AccountCommand::List { json, store } => {
            let all = crate::store::open(&store.store).await?.list_accounts().await?;
            if json {
                let items: Vec<_> = all.iter().map(|a| json!({"login": a.login, "machineType": a.machine_type})).collect();
                println!("{}", serde_json::Value::from(items));
            } else {
                println!("{:<32} MACHINE TYPE", "LOGIN");
                all.iter().for_each(|a| println!("{:<32} {}", a.login, a.machine_type));
            }
        }
        AccountCommand::Delete { login, store } => {
            if !crate::store::open(&store.store).await?.delete_account(&login).await? {
                bail!("no account {login:?}");
            }
            println!("deleted account {login}");
        }
    }
    Ok(())
}
