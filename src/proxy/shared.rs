//! State every connection reads, on every worker thread: the routing table, init's health state, the TLS
//! config and the access log. Each is replaced whole when init sends a message, so a request always sees one
//! consistent version.
#![forbid(unsafe_code)]

use std::sync::{Arc, RwLock};

use super::access_log::AccessLog;
use super::conn_limit::{self, ConnLimit};
use super::protocol::{InitMessage, ProxyRuntimeConfig, ProxyState};
use super::reach;
use super::routes::Routes;
use super::tls::{self, TlsHolder};

pub struct Shared {
    routes: RwLock<Arc<Routes>>,
    health: RwLock<Arc<ProxyState>>,
    pub tls: TlsHolder,
    pub log: Arc<AccessLog>,
    /// Open client connections and `max_connections`.
    pub conns: Arc<ConnLimit>,
}

impl Shared {
    /// Compile the first config; errors here are fatal for the proxy (it has nothing to serve).
    pub fn new(config: &ProxyRuntimeConfig, state: ProxyState) -> Result<Arc<Shared>, Vec<String>> {
        let routes = Routes::build(config, None)?;
        routes.apply_state(&state);
        reach::report_unreachable(&routes);
        let shared = Shared {
            routes: RwLock::new(Arc::new(routes)),
            health: RwLock::new(Arc::new(state)),
            tls: TlsHolder::default(),
            log: AccessLog::new(),
            conns: ConnLimit::new(conn_limit::cap_for(&config.proxy)),
        };
        if let Some(spec) = &config.proxy.tls {
            shared.tls.set(Some(tls::load(spec).map_err(|e| vec![e])?));
        }
        Ok(Arc::new(shared))
    }

    pub fn routes(&self) -> Arc<Routes> {
        Arc::clone(&self.routes.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn health(&self) -> Arc<ProxyState> {
        Arc::clone(&self.health.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Apply one message from init. A bad new config is logged and the old one kept, like nginx's reload.
    pub fn apply(&self, message: InitMessage) {
        match message {
            InitMessage::Config(config) => self.reconfigure(&config),
            InitMessage::State(state) => {
                self.routes().apply_state(&state);
                tracing::info!(
                    draining = state.draining,
                    ready = state.ready.len(),
                    unhealthy = ?state.unhealthy,
                    "state from init"
                );
                *self.health.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
            }
        }
    }

    pub fn reconfigure(&self, config: &ProxyRuntimeConfig) {
        let current = self.routes();
        let routes = match Routes::build(config, Some(&current)) {
            Ok(routes) => routes,
            Err(errors) => {
                for e in errors {
                    tracing::error!("new proxy config rejected: {e}");
                }
                return;
            }
        };
        routes.apply_state(&self.health());
        reach::report_unreachable(&routes);
        match &config.proxy.tls {
            Some(spec) => match tls::load(spec) {
                // Open TLS sessions keep their keys; only new handshakes use the new certificate.
                Ok(tls) => self.tls.set(Some(tls)),
                Err(e) => tracing::error!("TLS reload failed, keeping the old certificate: {e}"),
            },
            None => self.tls.set(None),
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        self.conns.set_cap(conn_limit::cap_for(&config.proxy));
        if super::workers::wanted(&config.proxy) != super::workers::count() {
            // Init restarts the proxy for a new `workers`; standalone, it takes a restart too.
            tracing::warn!("the new `workers` applies when the proxy restarts");
        }
        tracing::info!("proxy config applied");
    }
}
