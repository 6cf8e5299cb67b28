//! The agent's HTTP client: GETs to its own gateway (health probes, the
//! declarative export, a rehearsal CP) and artifact downloads from http(s)
//! locations.
//!
//! Built on hyper-util's client, which the agent already links for the
//! Docker socket (bollard), with hyper-rustls for https: reqwest did the
//! same on top of them, and its own layer (≈ 330 KiB of code) was resident
//! in every idle agent for a handful of plain GETs (benches/agent_idle).
//! What reqwest gave that these calls rely on is kept: redirects are
//! followed (up to 10, as reqwest did), https verifies against the host's
//! native roots, and a request has connect and overall timeouts.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, LOCATION, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use url::Url;

/// Redirects followed before a GET gives up (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// Why a GET gave no response, or its body broke off.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not an http or https URL")]
    BadUrl(String),
    #[error(transparent)]
    Request(#[from] hyper_util::client::legacy::Error),
    /// hyper's own: a broken body, or the exchange with a proxy.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("{0}")]
    Proxy(String),
}

/// A client with its timeouts.
#[derive(Debug)]
pub struct HttpClient {
    plain: Client<HttpConnector, Empty<Bytes>>,
    /// Made at the first https GET: most agents only ever speak plain http
    /// to their own gateway, and the host's trusted roots, once loaded,
    /// stay in memory.
    tls: OnceLock<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>>,
    /// The host's trusted roots, read once, at the first https GET (direct
    /// or through a proxy's tunnel).
    tls_config: OnceLock<rustls::ClientConfig>,
    connect_timeout: Duration,
    /// Bound on a whole GET, body included; None: unbounded.
    timeout: Option<Duration>,
    /// Bound on each wait for the server: for an answer (each redirect's
    /// too) and for each piece of the body. None: unbounded.
    stall: Option<Duration>,
    /// Proxies to go through (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`);
    /// None: always direct.
    proxies: Option<Matcher>,
}

impl HttpClient {
    /// A client whose connections are never kept for another request: a
    /// kept-alive connection to a gateway that is draining would delay its
    /// stop.
    pub fn new(connect_timeout: Duration, timeout: Option<Duration>) -> Self {
        HttpClient {
            plain: client(connector(connect_timeout)),
            tls: OnceLock::new(),
            tls_config: OnceLock::new(),
            connect_timeout,
            timeout,
            stall: None,
            proxies: None,
        }
    }

    /// Goes through the proxies `proxies` names for each URL: an `http://`
    /// URL as an absolute-form request to the proxy, an `https://` one
    /// through a CONNECT tunnel (TLS end to end with the server).
    pub fn through(mut self, proxies: Matcher) -> Self {
        self.proxies = Some(proxies);
        self
    }

    /// Sends `req` for `at`: directly, or through the proxy for it.
    async fn send(
        &self,
        at: &Url,
        req: Request<Empty<Bytes>>,
    ) -> Result<http::Response<Incoming>, HttpError> {
        let proxy = self.proxies.as_ref().and_then(|m| m.intercept(req.uri()));
        let Some(proxy) = proxy else {
            return Ok(if at.scheme() == "https" {
                self.tls().request(req).await?
            } else {
                self.plain.request(req).await?
            });
        };
        let via = proxy.uri().clone();
        if via.scheme_str() != Some("http") {
            return Err(HttpError::Proxy(format!(
                "the proxy {via} for {at}: only http:// proxies are supported"
            )));
        }
        if at.scheme() == "https" {
            let mut tunnel = Tunnel::new(via, connector(self.connect_timeout));
            if let Some(a) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(a.clone());
            }
            return Ok(client(self.https(tunnel)).request(req).await?);
        }
        // Plain http: the request, in absolute form, to the proxy itself.
        let host = via.host().unwrap_or_default().to_string();
        let port = via.port_u16().unwrap_or(80);
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| HttpError::Timeout(self.connect_timeout))?
        .map_err(|e| HttpError::Proxy(format!("cannot connect to the proxy {via}: {e}")))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = req;
        if let Some(a) = proxy.basic_auth() {
            req.headers_mut().insert(PROXY_AUTHORIZATION, a.clone());
        }
        if let Some(h) = req.uri().authority().map(|a| a.as_str().to_string())
            && let Ok(v) = HeaderValue::from_str(&h)
        {
            req.headers_mut().insert(HOST, v);
        }
        Ok(send.send_request(req).await?)
    }

    /// Bounds each wait for the server by `stall`: a download may take long
    /// in all, but a server that stops sending must end it.
    pub fn stalling_after(mut self, stall: Duration) -> Self {
        self.stall = Some(stall);
        self
    }

    /// TLS over `inner` (a direct connection or a proxy's tunnel), trusting
    /// the host's roots, read once per client.
    fn https<C>(&self, inner: C) -> HttpsConnector<C> {
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls_config.get_or_init(native_roots_config).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(inner)
    }

    fn tls(&self) -> &Client<HttpsConnector<HttpConnector>, Empty<Bytes>> {
        self.tls.get_or_init(|| {
            let mut http = connector(self.connect_timeout);
            // The https connector hands its plain connector https URLs.
            http.enforce_http(false);
            client(self.https(http))
        })
    }

    /// GETs `url`, following redirects, within the client's timeout and
    /// stall bound; the response's body is read with [`Response::bytes`] or
    /// [`Response::chunk`] under the same bounds.
    pub async fn get(&self, url: &str) -> Result<Response, HttpError> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let fetch = self.follow(url);
        let mut resp = match (deadline, self.timeout) {
            (Some(d), Some(t)) => tokio::time::timeout_at(d, fetch)
                .await
                .map_err(|_| HttpError::Timeout(t))??,
            _ => fetch.await?,
        };
        resp.deadline = deadline.zip(self.timeout);
        resp.stall = self.stall;
        Ok(resp)
    }

    async fn follow(&self, url: &str) -> Result<Response, HttpError> {
        let mut at = http_url(url)?;
        // Credentials in the URL go as basic auth (as reqwest sent them), and
        // only to where they were given: a redirect to another origin drops
        // them unless it names its own.
        let origin = at.origin();
        let given = basic_auth(&at);
        for _ in 0..=MAX_REDIRECTS {
            let auth = basic_auth(&at).or_else(|| given.clone().filter(|_| at.origin() == origin));
            let mut bare = at.clone();
            let _ = bare.set_username("");
            let _ = bare.set_password(None);
            let mut req = Request::get(bare.as_str());
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            let req = req
                .body(Empty::new())
                .map_err(|_| HttpError::BadUrl(bare.to_string()))?;
            let answer = self.send(&at, req);
            let resp = match self.stall {
                Some(s) => tokio::time::timeout(s, answer)
                    .await
                    .map_err(|_| HttpError::Timeout(s))??,
                None => answer.await?,
            };
            // The redirects reqwest followed; 300, 304 and 305 are answers.
            let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let next = redirect
                .then(|| resp.headers().get(LOCATION))
                .flatten()
                .and_then(|l| l.to_str().ok())
                .and_then(|l| at.join(l).ok());
            match next {
                Some(n) => at = http_url(n.as_str())?,
                None => {
                    let (parts, body) = resp.into_parts();
                    return Ok(Response {
                        status: parts.status,
                        headers: parts.headers,
                        body,
                        deadline: None,
                        stall: None,
                    });
                }
            }
        }
        Err(HttpError::TooManyRedirects)
    }
}

/// A response whose body has not been read yet.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    /// The GET's deadline and the timeout it came from.
    deadline: Option<(Instant, Duration)>,
    /// The client's bound on each wait for a piece of the body.
    stall: Option<Duration>,
}

impl Response {
    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, HttpError> {
        let collect = self.body.collect();
        let collected = match self.deadline {
            Some((d, t)) => tokio::time::timeout_at(d, collect)
                .await
                .map_err(|_| HttpError::Timeout(t))??,
            None => collect.await?,
        };
        Ok(collected.to_bytes())
    }

    /// The body's next piece, None at its end; a piece that takes longer
    /// than the client's stall bound, or runs past the GET's deadline, is a
    /// timeout.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        let stalled = self.stall.map(|s| (Instant::now() + s, s));
        let bound = match (self.deadline, stalled) {
            (Some(d), Some(s)) => Some(if d.0 < s.0 { d } else { s }),
            (d, s) => d.or(s),
        };
        loop {
            let next = self.body.frame();
            let frame = match bound {
                Some((until, t)) => tokio::time::timeout_at(until, next)
                    .await
                    .map_err(|_| HttpError::Timeout(t))?,
                None => next.await,
            };
            match frame {
                None => return Ok(None),
                Some(f) => {
                    // Trailers carry no content.
                    if let Ok(data) = f?.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http
}

/// A hyper-util client over `connector` that keeps no idle connection.
fn client<C>(connector: C) -> Client<C, Empty<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// `Authorization: Basic` for the credentials in `url`, if any.
fn basic_auth(url: &Url) -> Option<HeaderValue> {
    use base64::Engine;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let pair = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or_default())
    );
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
    .ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// `url` parsed, if it is http or https.
fn http_url(url: &str) -> Result<Url, HttpError> {
    match Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u),
        _ => Err(HttpError::BadUrl(url.to_string())),
    }
}

/// TLS for https locations: the host's own trusted roots (as a browser or
/// curl on it would trust), with the process's crypto provider.
fn native_roots_config() -> rustls::ClientConfig {
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "cannot read some of the host's trusted certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "trusted roots for https downloads");
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Serves, on a loopback port, what `answer` gives for each request's
    /// head (as sent): the raw response to write, then whether to keep the
    /// connection open afterwards without closing it (a stalled body).
    async fn listen<F>(answer: F) -> SocketAddr
    where
        F: Fn(&str) -> (String, bool) + Clone + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let (resp, stall) = answer(&head);
                    let _ = c.write_all(resp.as_bytes()).await;
                    if stall {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                });
            }
        });
        addr
    }

    /// As `listen`, answering by the request's path.
    async fn serve(answer: fn(&str) -> (String, bool)) -> SocketAddr {
        listen(move |head: &str| answer(head.split_whitespace().nth(1).unwrap_or("/"))).await
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-gw: demo/3.4.1\r\n\r\n{body}",
            body.len()
        )
    }

    fn redirect(to: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n")
    }

    #[test]
    fn only_http_and_https_urls_are_fetched() {
        assert!(http_url("http://127.0.0.1:9/x").is_ok());
        assert!(http_url("https://example.invalid/a.tar.gz").is_ok());
        for bad in ["ftp://h/x", "file:///etc/passwd", "/abs/path", "not a url"] {
            assert!(matches!(http_url(bad), Err(HttpError::BadUrl(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn redirects_are_followed_relative_and_absolute() {
        let addr = serve(|p| match p {
            "/dl/a.tar.gz" => (redirect("../store/a.tar.gz"), false),
            "/store/a.tar.gz" => (redirect("/final"), false),
            "/final" => (ok("artifact"), false),
            _ => (
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into(),
                false,
            ),
        })
        .await;
        let c = HttpClient::new(Duration::from_secs(2), Some(Duration::from_secs(5)));
        let r = c.get(&format!("http://{addr}/dl/a.tar.gz")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers.get("x-gw").unwrap(), "demo/3.4.1");
        assert_eq!(r.bytes().await.unwrap(), "artifact");
        let missing = c.get(&format!("http://{addr}/nothing")).await.unwrap();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn credentials_in_the_url_go_as_basic_auth_to_their_origin_only() {
        // Answers with the Authorization header it got (or "none").
        async fn echo_auth() -> SocketAddr {
            listen(|head: &str| {
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("none");
                (ok(auth), false)
            })
            .await
        }
        let addr = echo_auth().await;
        let c = HttpClient::new(Duration::from_secs(2), Some(Duration::from_secs(5)));
        let r = c
            .get(&format!("http://ops:s%40cret@{addr}/a"))
            .await
            .unwrap();
        // base64("ops:s@cret")
        assert_eq!(r.bytes().await.unwrap(), "Basic b3BzOnNAY3JldA==");
        let r = c.get(&format!("http://{addr}/a")).await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), "none");
        // Redirected to another origin (another port), the credentials stay behind.
        let other = echo_auth().await;
        let hop = listen(move |_: &str| (redirect(&format!("http://{other}/b")), false)).await;
        let r = c.get(&format!("http://ops:pw@{hop}/a")).await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), "none");
    }

    /// A forward proxy on loopback: refuses (403) the one CONNECT the test
    /// expects, and answers anything else itself with the request line and
    /// its Proxy-Authorization (a wrong CONNECT thus "succeeds" and the TLS
    /// handshake that follows fails differently).
    async fn proxy() -> SocketAddr {
        listen(|head: &str| {
            let head = head.to_lowercase();
            let line = head.lines().next().unwrap_or_default();
            let auth = head
                .lines()
                .find_map(|l| l.strip_prefix("proxy-authorization: "))
                .unwrap_or("none");
            let resp = if line == "connect artifacts.invalid:443 http/1.1" {
                "HTTP/1.1 403 Forbidden\r\n\r\n".to_string()
            } else {
                ok(&format!("{line} | {auth}"))
            };
            (resp, false)
        })
        .await
    }

    #[tokio::test]
    async fn downloads_go_through_the_proxy_named_for_them() {
        let via = proxy().await;
        let proxies = Matcher::builder()
            .all(format!("http://ops:pw@{via}"))
            .no("127.0.0.9")
            .build();
        let c =
            HttpClient::new(Duration::from_secs(2), Some(Duration::from_secs(5))).through(proxies);
        // http: the request, absolute, to the proxy, with its credentials
        // (the proxy reports what it saw in lower case).
        let r = c
            .get("http://artifacts.invalid:8080/a.tar.gz")
            .await
            .unwrap();
        assert_eq!(
            r.bytes().await.unwrap(),
            "get http://artifacts.invalid:8080/a.tar.gz http/1.1 | basic b3bzonb3"
        );
        // https: a CONNECT to the server through the proxy (refused here).
        let e = c
            .get("https://artifacts.invalid/a.tar.gz")
            .await
            .unwrap_err();
        let chain = crate::health::error_chain(&e);
        assert!(chain.contains("tunnel error: unsuccessful"), "{chain}");
        // NO_PROXY hosts go direct: nothing listens there.
        let e = c.get("http://127.0.0.9:9/x").await.unwrap_err();
        assert!(
            crate::health::error_chain(&e)
                .to_lowercase()
                .contains("refused")
        );
    }

    #[tokio::test]
    async fn a_redirect_loop_ends() {
        let addr = serve(|_| (redirect("/again"), false)).await;
        let c = HttpClient::new(Duration::from_secs(2), Some(Duration::from_secs(5)));
        let e = c.get(&format!("http://{addr}/start")).await.unwrap_err();
        assert!(matches!(e, HttpError::TooManyRedirects), "{e}");
    }

    #[tokio::test]
    async fn a_stalled_body_is_a_timeout_not_a_hang() {
        let addr = serve(|_| {
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart".into(),
                true,
            )
        })
        .await;
        let c = HttpClient::new(Duration::from_secs(2), None)
            .stalling_after(Duration::from_millis(300));
        let mut r = c.get(&format!("http://{addr}/big")).await.unwrap();
        assert_eq!(r.chunk().await.unwrap().unwrap(), "part");
        let e = r.chunk().await.unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");
        // The overall timeout bounds reading the whole body too.
        let c = HttpClient::new(Duration::from_secs(2), Some(Duration::from_millis(300)));
        let e = c
            .get(&format!("http://{addr}/big"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout_not_a_hang() {
        // Accepts, reads the request, sends nothing.
        let addr = serve(|_| (String::new(), true)).await;
        let c = HttpClient::new(Duration::from_secs(2), None)
            .stalling_after(Duration::from_millis(300));
        let e = c.get(&format!("http://{addr}/a.tar.gz")).await.unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");
        let c = HttpClient::new(Duration::from_secs(2), Some(Duration::from_millis(300)));
        let e = c.get(&format!("http://{addr}/status")).await.unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");
    }

    #[tokio::test]
    async fn a_refused_connection_says_so() {
        // Bound then dropped: nothing listens there now.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let c = HttpClient::new(Duration::from_secs(2), Some(Duration::from_secs(5)));
        let e = c.get(&format!("http://{addr}/status")).await.unwrap_err();
        let chain = crate::health::error_chain(&e);
        assert!(chain.to_lowercase().contains("refused"), "{chain}");
    }
}
