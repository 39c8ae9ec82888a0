//! [`App`]: what every handler shares, the service, the token keys, the settings and the per-process login state.

use crate::auth::AccountCheck;
use crate::throttle::{HashingGate, LoginThrottle};
use crate::verified::VerifiedLogins;
use crate::{AdminAuth, HttpConfig};
use metahub_core::service::RegistryService;
use metahub_core::token::TokenKeys;
use std::sync::Arc;

/// Shared by every handler.
pub struct App {
    pub registry: RegistryService,
    pub keys: TokenKeys,
    pub config: HttpConfig,
    /// How `/admin/*` authenticates. Kept out of `HttpConfig` so that the functions that serve no admin routes
    /// need not name it.
    pub admin: AdminAuth,
    pub(crate) throttle: LoginThrottle,
    pub(crate) hashing: HashingGate,
    pub(crate) accounts: AccountCheck,
    pub(crate) verified: VerifiedLogins,
}

impl App {
    pub fn new(registry: RegistryService, keys: TokenKeys, config: HttpConfig) -> Arc<App> {
        Self::with_admin(registry, keys, config, AdminAuth::Disabled)
    }

    /// An app whose `/admin/*` routes authenticate with `admin`.
    pub fn with_admin(registry: RegistryService, keys: TokenKeys, config: HttpConfig, admin: AdminAuth) -> Arc<App> {
        Arc::new(App {
            registry,
            keys,
            config,
            admin,
            throttle: LoginThrottle::default(),
            hashing: HashingGate::for_this_machine(),
            accounts: AccountCheck::default(),
            verified: VerifiedLogins::default(),
        })
    }

    /// `login`'s account was written or deleted through this process: its verified credentials and the state tokens
    /// are checked against are dropped at once (other processes see it within [`crate::auth::ACCOUNT_RECHECK`]).
    pub fn account_changed(&self, login: &str) {
        self.verified.forget(login);
        self.accounts.forget(login);
    }

    /// Password hashes checked since start (argon2id runs): what logins cost, for tests and benchmarks.
    pub fn password_checks(&self) -> u64 {
        self.hashing.checks()
    }
}
