//! Ports: listing, visibility and port-forward connections.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};

use super::{enc, Client, ClientError, Result};
use crate::{ErrorBody, Port, PortVisibility, SetPort};

impl Client {
    pub async fn ports(&self, name: &str) -> Result<Vec<Port>> {
        self.get(&format!("/v1/workspaces/{}/ports", enc(name)))
            .await
    }

    pub async fn set_port(
        &self,
        name: &str,
        port: u16,
        visibility: PortVisibility,
    ) -> Result<Port> {
        let url = self.url(&format!("/v1/workspaces/{}/ports/{port}", enc(name)));
        let req = self.http.put(url).json(&SetPort { visibility });
        Self::json(self.send(req).await?).await
    }

    /// Carries one local TCP connection to `port` inside workspace `name` over a
    /// port-forward WebSocket, until both sides are done. Refusals (no such workspace,
    /// not running, nothing listening) come back before any byte is read from `tcp`.
    pub async fn forward_connection(
        &self,
        name: &str,
        port: u16,
        tcp: tokio::net::TcpStream,
    ) -> Result<()> {
        let url = self.ws_url(&format!(
            "/v1/workspaces/{}/ports/{port}/forward",
            enc(name)
        ));
        let wsreq = self.ws_request(&url)?;
        let ws = match tokio_tungstenite::connect_async(wsreq).await {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp.body().clone().unwrap_or_default();
                return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                    Ok(e) => ClientError::Api(e.error),
                    Err(_) => ClientError::Status {
                        status: resp.status().as_u16(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    },
                });
            }
            Err(tungstenite::Error::Io(_)) => {
                return Err(ClientError::Unreachable(self.base.clone()))
            }
            Err(e) => {
                return Err(ClientError::Connection {
                    url,
                    reason: e.to_string(),
                })
            }
        };
        let (mut sink, mut stream) = ws.split();
        let (mut tcp_r, mut tcp_w) = tcp.into_split();
        let conn_err = |e: tungstenite::Error| ClientError::Connection {
            url: url.clone(),
            reason: e.to_string(),
        };
        // Local bytes out; an empty message marks our end of writing (half-close).
        let up = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match tcp_r.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        sink.send(Message::Binary(Vec::new().into()))
                            .await
                            .map_err(conn_err)?;
                        return Ok::<_, ClientError>(sink);
                    }
                    Ok(n) => sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .map_err(conn_err)?,
                }
            }
        };
        // Remote bytes in, until the app closes its side or the server closes.
        let down = async {
            while let Some(msg) = stream.next().await {
                match msg.map_err(conn_err)? {
                    Message::Binary(b) if b.is_empty() => break,
                    Message::Binary(b) => {
                        let written = tcp_w.write_all(&b).await;
                        if written.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = tcp_w.shutdown().await;
            Ok::<_, ClientError>(())
        };
        let (sink, down) = tokio::join!(up, down);
        down?;
        let _ = sink?.close().await;
        Ok(())
    }
}
