//! `hearth ports`, `hearth port` and `hearth port-forward`.

use anyhow::{bail, Context};
use hearth_api::{PortProtocol, PortVisibility};

use super::{print_table, Commands};

/// `REMOTE[:LOCAL]`; LOCAL defaults to REMOTE, and `0` picks a free local port.
pub fn parse_forward(spec: &str) -> anyhow::Result<(u16, u16)> {
    let port = |s: &str, zero_ok: bool| -> anyhow::Result<u16> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 || zero_ok => Ok(p),
            _ => bail!("invalid port {s:?} in {spec:?}: use REMOTE[:LOCAL], ports 1-65535"),
        }
    };
    match spec.split_once(':') {
        Some((r, l)) => Ok((port(r, false)?, port(l, true)?)),
        None => {
            let r = port(spec, false)?;
            Ok((r, r))
        }
    }
}

impl Commands {
    pub async fn ports(&self, name: &str, json: bool) -> anyhow::Result<()> {
        let ports = self.api.ports(name).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&ports)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = ports
            .iter()
            .map(|p| {
                let mut port = p.port.to_string();
                if p.protocol == PortProtocol::Https {
                    port.push_str(" (https)");
                }
                vec![
                    port,
                    p.label.clone().unwrap_or_else(|| "-".into()),
                    p.visibility.to_string(),
                    if p.listening {
                        p.addresses.join(",")
                    } else {
                        "not listening".into()
                    },
                    p.url.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(&["PORT", "LABEL", "VISIBILITY", "LISTENING", "URL"], &rows);
        Ok(())
    }

    pub async fn set_port(&self, name: &str, port: u16, public: bool) -> anyhow::Result<()> {
        let vis = if public {
            PortVisibility::Public
        } else {
            PortVisibility::Private
        };
        let p = self.api.set_port(name, port, vis).await?;
        match &p.url {
            Some(url) => println!("port {port} of {name} is {vis}: {url}"),
            None => println!("port {port} of {name} is {vis} (the server runs no port proxy)"),
        }
        Ok(())
    }

    /// Listens on 127.0.0.1:LOCAL and carries each accepted connection to REMOTE inside
    /// the workspace over its own WebSocket, until interrupted.
    pub async fn port_forward(&self, name: &str, spec: &str) -> anyhow::Result<()> {
        let (remote, local) = parse_forward(spec)?;
        // Fail early and clearly when the workspace cannot be reached at all.
        self.api.workspace(name).await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
            .await
            .with_context(|| {
                format!("cannot listen on 127.0.0.1:{local} (pick another LOCAL port)")
            })?;
        let addr = listener.local_addr()?;
        println!("forwarding {addr} -> {name}:{remote} (Ctrl-C stops)");
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => r.context("accept failed")?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            let api = self.api.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                if let Err(e) = api.forward_connection(&name, remote, tcp).await {
                    eprintln!("hearth: forward from {peer} to {name}:{remote}: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs() {
        assert_eq!(parse_forward("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_forward("8080:9000").unwrap(), (8080, 9000));
        assert_eq!(parse_forward("5432:0").unwrap(), (5432, 0));
        for bad in ["", "0", "x", "8080:", "70000", "1:2:3"] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
    }
}
