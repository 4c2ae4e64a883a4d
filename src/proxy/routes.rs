//! The routing table compiled from a `ProxyRuntimeConfig`: server names, locations and what each location does.
//! A new table is built on every `Config` message and swapped in whole; replicas whose address is unchanged are
//! carried over so their pools and in-flight counts survive a reload.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;

use super::admission::Gate;
use super::location::Locations;
use super::metrics::{self, Series};
use super::protocol::{ProxyRuntimeConfig, ProxyState};
use super::real_ip::Trusted;
use super::server_name::ServerNames;
use super::static_files::StaticSpec;
use super::upstream::{Address, Replica, Upstream};

/// What a location does with a request.
pub enum Action {
    Proxy(ProxyTo),
    Static(StaticSpec),
    Return {
        status: StatusCode,
        redirect: Option<String>,
    },
}

/// A location that proxies: where to, and which `Upgrade` protocols it lets through.
pub struct ProxyTo {
    pub upstream: Arc<Upstream>,
    /// Lowercased protocol names (`websocket`); a request asking for any other is forwarded without them.
    pub upgrade: Vec<String>,
}

pub struct Server {
    pub locations: Locations,
    pub actions: Vec<Action>,
    /// Each location's request counters (aligned with `actions`), then the server's own for a path no
    /// location matches.
    pub series: Vec<Arc<Series>>,
}

/// Limits and timeouts from `[proxy]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub client_max_body_size: u64,
    pub max_header_size: usize,
    pub underscores_in_headers: bool,
    pub connect_timeout: Duration,
    pub queue_timeout: Duration,
    pub header_timeout: Duration,
    pub upstream_timeout: Duration,
    pub idle_timeout: Duration,
    pub stop_grace: Duration,
    /// `trusted_proxies`: whose X-Forwarded-For and X-Forwarded-Proto are believed.
    pub trusted: Arc<Trusted>,
}

pub struct Routes {
    pub names: ServerNames,
    pub servers: Vec<Server>,
    /// Service upstreams by name; readiness comes from init's `State` messages.
    services: HashMap<String, Arc<Upstream>>,
    pub settings: Settings,
}

/// Suffixes of the EC2 name forms; servers with such a wildcard also get the instance's discovered names.
const EC2_SUFFIXES: &[&str] = &["amazonaws.com", "compute.internal", "ec2.internal"];

impl Routes {
    pub fn build(
        config: &ProxyRuntimeConfig,
        previous: Option<&Routes>,
    ) -> Result<Routes, Vec<String>> {
        let spec = &config.proxy;
        let mut errors = Vec::new();
        let old: HashMap<(String, Address), Arc<Replica>> = previous
            .into_iter()
            .flat_map(|p| p.services.values())
            .flat_map(|u| u.replicas.iter())
            .map(|r| ((r.name.clone(), r.address.clone()), Arc::clone(r)))
            .collect();
        // Each service's gate (its queue and learned costs) carries over too, shared by old and new replicas.
        let old_gates: HashMap<&str, &Arc<Gate>> = previous
            .into_iter()
            .flat_map(|p| p.services.iter())
            .map(|(name, u)| (name.as_str(), u.gate()))
            .collect();
        let mut services = HashMap::new();
        for (service, replicas) in &config.upstreams {
            let gate = old_gates
                .get(service.as_str())
                .map_or_else(Gate::new, |g| Arc::clone(g));
            let mut compiled = Vec::new();
            for replica in replicas {
                let Some(address) = Address::parse(&replica.address) else {
                    errors.push(format!(
                        "upstream {service}: bad address {:?}",
                        replica.address
                    ));
                    continue;
                };
                let reused = old
                    .get(&(replica.name.clone(), address.clone()))
                    .filter(|r| Arc::ptr_eq(r.gate(), &gate))
                    .cloned();
                let compiled_replica = reused.unwrap_or_else(|| {
                    Replica::new(replica.name.clone(), address, false, Arc::clone(&gate))
                });
                compiled_replica.set_limit(replica.max_in_flight);
                compiled.push(compiled_replica);
            }
            services.insert(
                service.clone(),
                Arc::new(Upstream::new(service.clone(), compiled, gate)),
            );
        }
        let mut addressed: HashMap<String, Arc<Upstream>> = HashMap::new();
        let default = spec.server.iter().position(|s| s.default).unwrap_or(0);
        let mut name_lists: Vec<Vec<String>> =
            spec.server.iter().map(|s| s.server_name.clone()).collect();
        let instance_names: Vec<String> = config
            .extra_server_names
            .iter()
            .chain(&spec.extra_server_names)
            .cloned()
            .collect();
        add_instance_names(&mut name_lists, &instance_names, default);
        let names = match ServerNames::new(&name_lists, default) {
            Ok(names) => names,
            Err(e) => {
                errors.push(e.0);
                ServerNames::default()
            }
        };
        let mut servers = Vec::new();
        for (si, server) in spec.server.iter().enumerate() {
            let mut actions = Vec::new();
            for (li, loc) in server.location.iter().enumerate() {
                let what = format!("proxy.server[{si}].location[{li}] ({})", loc.path);
                let chosen = [
                    loc.upstream.is_some(),
                    loc.root.is_some() || loc.alias.is_some(),
                    loc.return_status.is_some(),
                ];
                if chosen.iter().filter(|c| **c).count() != 1 {
                    errors.push(format!(
                        "{what}: needs exactly one of upstream, root/alias, return"
                    ));
                    actions.push(Action::Return {
                        status: StatusCode::NOT_FOUND,
                        redirect: None,
                    });
                    continue;
                }
                if let Some(name) = &loc.upstream {
                    let upgrade = upgrade_list(loc);
                    if let Some(up) = services.get(name) {
                        actions.push(Action::Proxy(ProxyTo {
                            upstream: Arc::clone(up),
                            upgrade,
                        }));
                    } else if let Some(address) = Address::parse(name) {
                        let up = addressed.entry(name.clone()).or_insert_with(|| {
                            let gate = Gate::new();
                            let replica =
                                Replica::new(name.clone(), address, true, Arc::clone(&gate));
                            Arc::new(Upstream::new(name.clone(), vec![replica], gate))
                        });
                        actions.push(Action::Proxy(ProxyTo {
                            upstream: Arc::clone(up),
                            upgrade,
                        }));
                    } else {
                        errors.push(format!("{what}: upstream {name:?} is neither a service with `listen` nor an address"));
                        actions.push(Action::Return {
                            status: StatusCode::BAD_GATEWAY,
                            redirect: None,
                        });
                    }
                } else if let Some(code) = loc.return_status {
                    match StatusCode::from_u16(code) {
                        Ok(status) => actions.push(Action::Return {
                            status,
                            redirect: loc.redirect.clone(),
                        }),
                        Err(_) => {
                            errors.push(format!("{what}: bad return status {code}"));
                            actions.push(Action::Return {
                                status: StatusCode::NOT_FOUND,
                                redirect: None,
                            });
                        }
                    }
                } else {
                    actions.push(Action::Static(StaticSpec {
                        root: loc.root.clone(),
                        alias: if loc.root.is_some() {
                            None
                        } else {
                            loc.alias.clone()
                        },
                        prefix: loc.path.clone(),
                        index: loc.index.clone(),
                    }));
                }
            }
            let locations =
                Locations::new(server.location.iter().map(|l| (l.path.as_str(), l.exact)));
            let series = server_series(server);
            servers.push(Server {
                locations,
                actions,
                series,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let settings = Settings {
            client_max_body_size: spec.client_max_body_size.0,
            max_header_size: spec.max_header_size.0.clamp(1024, 1 << 20) as usize,
            underscores_in_headers: spec.underscores_in_headers,
            connect_timeout: spec.connect_timeout.0,
            queue_timeout: spec.queue_timeout.0,
            header_timeout: spec.header_timeout.0,
            upstream_timeout: spec.upstream_timeout.0,
            idle_timeout: spec.idle_timeout.0,
            stop_grace: spec.stop_grace.0,
            trusted: Arc::new(Trusted::from_spec(&spec.trusted_proxies)),
        };
        Ok(Routes {
            names,
            servers,
            services,
            settings,
        })
    }

    /// Mark replicas ready or not from init's latest state.
    pub fn apply_state(&self, state: &ProxyState) {
        for upstream in self.services.values() {
            for replica in &upstream.replicas {
                replica.set_ready(state.ready.contains(&replica.name));
            }
            upstream.update_slow_cap();
        }
    }
}

/// The request counters of a server's locations, labelled with its first name and each location's upstream, and
/// last the server's own (no upstream).
fn server_series(server: &crate::config::ServerSpec) -> Vec<Arc<Series>> {
    let label = server.server_name.first().map_or("_", String::as_str);
    let registry = metrics::registry();
    server
        .location
        .iter()
        .map(|l| registry.series(label, l.upstream.as_deref().unwrap_or(metrics::NONE)))
        .chain([registry.series(label, metrics::NONE)])
        .collect()
}

/// A location's `upgrade` list, lowercased, with the default when unset.
fn upgrade_list(location: &crate::config::LocationSpec) -> Vec<String> {
    match &location.upgrade {
        Some(list) => list.iter().map(|p| p.to_ascii_lowercase()).collect(),
        None => crate::config::DEFAULT_UPGRADE
            .iter()
            .map(|p| p.to_string())
            .collect(),
    }
}

/// Instance names (from IMDS) join every server that lists an EC2 wildcard, or the default server if none does.
fn add_instance_names(lists: &mut [Vec<String>], extra: &[String], default: usize) {
    if extra.is_empty() || lists.is_empty() {
        return;
    }
    let ec2 = |name: &String| {
        name.starts_with(['*', '.'])
            && EC2_SUFFIXES
                .iter()
                .any(|s| name.to_ascii_lowercase().ends_with(s))
    };
    let mut targets: Vec<usize> = lists
        .iter()
        .enumerate()
        .filter(|(_, l)| l.iter().any(ec2))
        .map(|(i, _)| i)
        .collect();
    if targets.is_empty() {
        targets.push(default.min(lists.len() - 1));
    }
    for i in targets {
        lists[i].extend(extra.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LocationSpec, ProxySpec, ServerSpec};
    use crate::proxy::protocol::UpstreamReplica;

    fn config() -> ProxyRuntimeConfig {
        let loc = |path: &str, upstream: &str| LocationSpec {
            path: path.into(),
            upstream: Some(upstream.into()),
            ..Default::default()
        };
        ProxyRuntimeConfig {
            proxy: ProxySpec {
                server: vec![
                    ServerSpec {
                        server_name: vec!["a.test".into()],
                        default: false,
                        location: vec![loc("/", "app")],
                    },
                    ServerSpec {
                        server_name: vec!["*.compute.internal".into()],
                        default: true,
                        location: vec![loc("/", "127.0.0.1:9")],
                    },
                ],
                ..Default::default()
            },
            upstreams: [(
                "app".to_string(),
                vec![UpstreamReplica {
                    name: "app@0".into(),
                    address: "unix:/r/app@0.sock".into(),
                    max_in_flight: None,
                }],
            )]
            .into(),
            extra_server_names: vec!["10.1.2.3".into()],
            logs_dir: "/logs".into(),
        }
    }

    #[test]
    fn builds_and_carries_replicas_over() {
        let routes = Routes::build(&config(), None).unwrap();
        assert_eq!(routes.names.select(Some("a.test")), 0);
        assert_eq!(routes.names.select(Some("nope")), 1);
        assert_eq!(routes.names.select(Some("10.1.2.3")), 1);
        let state = ProxyState {
            ready: ["app@0".to_string()].into(),
            ..Default::default()
        };
        routes.apply_state(&state);
        let again = Routes::build(&config(), Some(&routes)).unwrap();
        let Action::Proxy(to) = &again.servers[0].actions[0] else {
            panic!("proxy action expected")
        };
        assert!(
            to.upstream.replicas[0].is_ready(),
            "replica state survives a reload"
        );
        assert_eq!(to.upgrade, ["websocket"], "WebSocket only, by default");
    }

    #[test]
    fn unknown_upstream_is_an_error() {
        let mut c = config();
        c.proxy.server[0].location[0].upstream = Some("nosuch".into());
        assert!(Routes::build(&c, None).is_err());
    }
}
