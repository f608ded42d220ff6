//! S3 requests to the fleet's garage, signed on the controller.
//!
//! An access key's secret never leaves the controller: for each single
//! request the controller computes an AWS Signature V4 (header-based:
//! `Authorization`, `x-amz-date`, `x-amz-content-sha256`) and hands the host a
//! `curl` command that carries those headers. A signature is bound to the
//! method, path, query, payload hash and its date, so it grants that one
//! request and nothing else: it is no secret. (AWS accepts it for 15 minutes
//! around its date; garage 2.5 for 24 hours after it, and a date in the
//! future too: so sign with the controller's clock, at the time of use.)
//!
//! Addressing is path-style over plain http, `http://<endpoint>/<bucket>/<key>`:
//! garage's S3 API listens on every host at 127.0.0.1:3900 and at its overlay
//! IP. [`parse_list`] reads a ListObjectsV2 result without an XML crate: the
//! shape is flat and element text never holds a `<`.

use crate::quote::Cmd;
use crate::secrets::Secrets;
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::SystemTime;

/// garage's S3 region (`s3_region` in garage.toml).
pub(crate) const REGION: &str = "garage";
/// The bucket of image layers (`mesh nodes` creates it and its key).
pub(crate) const IMAGES_BUCKET: &str = "mesh-images";
/// sha256 of nothing: the payload hash of a request without a body.
pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "s3";
/// Seconds curl may take to connect.
const CONNECT_TIMEOUT: &str = "10";
/// Seconds a request without a body may take in all.
const MAX_TIME: &str = "60";
/// Seconds a transfer may take in all (the signature's own AWS window).
const MAX_TIME_TRANSFER: &str = "900";
/// A transfer slower than this many bytes/s for [`SPEED_TIME`] seconds is aborted.
const SPEED_LIMIT: &str = "1024";
const SPEED_TIME: &str = "60";

/// An access key: its id, and its secret, which only signs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct S3Key {
    pub id: String,
    secret: String,
}

impl S3Key {
    pub(crate) fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        S3Key {
            id: id.into(),
            secret: secret.into(),
        }
    }
}

// Hand-written so that `{:?}` never shows the secret.
impl fmt::Debug for S3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The images' key (IMAGES_KEY / IMAGES_SECRET in secrets.env), once `mesh
/// nodes` has made it.
pub(crate) fn images_key(secrets: &Secrets) -> Option<S3Key> {
    let spec = &crate::phases::nodes::KeySpec::IMAGES;
    Some(S3Key::new(
        secrets.get(spec.id_var)?,
        secrets.get(spec.secret_var)?,
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Put,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// One S3 request, before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: Method,
    /// `host:port` of an S3 API, e.g. `127.0.0.1:3900`: the URL's and the
    /// signed `Host`.
    pub endpoint: String,
    pub bucket: String,
    /// The object; None for a request on the bucket itself (a listing).
    pub key: Option<String>,
    /// Query parameters as they are (encoded when signed), in any order.
    pub query: Vec<(String, String)>,
    /// Hex sha256 of the body: the file's for a PUT, [`EMPTY_SHA256`] else.
    pub payload_sha256: String,
}

impl Request {
    fn object(method: Method, endpoint: &str, bucket: &str, key: &str, sha256: &str) -> Self {
        Request {
            method,
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            key: Some(key.to_string()),
            query: Vec::new(),
            payload_sha256: sha256.to_string(),
        }
    }

    pub(crate) fn get(endpoint: &str, bucket: &str, key: &str) -> Self {
        Self::object(Method::Get, endpoint, bucket, key, EMPTY_SHA256)
    }

    pub(crate) fn delete(endpoint: &str, bucket: &str, key: &str) -> Self {
        Self::object(Method::Delete, endpoint, bucket, key, EMPTY_SHA256)
    }

    /// A PUT of a body whose hex sha256 is `payload_sha256` (garage refuses
    /// a body that does not match it).
    pub(crate) fn put(endpoint: &str, bucket: &str, key: &str, payload_sha256: &str) -> Self {
        Self::object(Method::Put, endpoint, bucket, key, payload_sha256)
    }

    /// ListObjectsV2 of the keys under `prefix`; `continuation` is the
    /// previous page's [`ListPage::next_token`].
    pub(crate) fn list(
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        continuation: Option<&str>,
    ) -> Self {
        let mut query = vec![
            ("list-type".to_string(), "2".to_string()),
            ("prefix".to_string(), prefix.to_string()),
        ];
        if let Some(token) = continuation {
            query.push(("continuation-token".to_string(), token.to_string()));
        }
        Request {
            method: Method::Get,
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            key: None,
            query,
            payload_sha256: EMPTY_SHA256.to_string(),
        }
    }
}

/// A signed request: the URL and the headers that carry the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signed {
    pub method: Method,
    pub url: String,
    pub authorization: String,
    pub amz_date: String,
    pub payload_sha256: String,
}

/// What curl does with a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// No body sent, the response's (if any) on stdout.
    None,
    /// PUT this file (a path on the host), streamed with its
    /// size known; the object key must not end in `/` (curl would append
    /// the file's name to the URL).
    Upload(&'a str),
    /// Write the response's body to this file on the host.
    Download(&'a str),
}

impl Signed {
    /// The headers, one `Name: value` a line.
    fn header_lines(&self) -> [String; 3] {
        [
            format!("Authorization: {}", self.authorization),
            format!("x-amz-date: {}", self.amz_date),
            format!("x-amz-content-sha256: {}", self.payload_sha256),
        ]
    }

    /// The curl command up to its headers.
    fn curl_head(&self, body: Body<'_>) -> Cmd {
        let mut c = Cmd::new("curl").args([
            "-fsS",
            "--globoff",
            "--path-as-is",
            "--connect-timeout",
            CONNECT_TIMEOUT,
        ]);
        c = match body {
            Body::None => c.args(["--max-time", MAX_TIME]),
            Body::Upload(_) | Body::Download(_) => c.args([
                "--max-time",
                MAX_TIME_TRANSFER,
                "--speed-limit",
                SPEED_LIMIT,
                "--speed-time",
                SPEED_TIME,
            ]),
        };
        match (self.method, body) {
            (Method::Get, _) | (Method::Put, Body::Upload(_)) => c,
            (Method::Put, _) => c.args(["-X", "PUT"]),
            (Method::Delete, _) => c.args(["-X", "DELETE"]),
        }
    }

    /// The command's tail: the body's option and the URL.
    fn curl_tail(&self, c: Cmd, body: Body<'_>) -> Cmd {
        let c = match body {
            Body::None => c,
            Body::Upload(path) => {
                debug_assert!(!self.url.ends_with('/'));
                c.args(["-T", path])
            }
            Body::Download(path) => c.args(["-o", path]),
        };
        c.arg(&self.url)
    }

    /// `curl -fsS …` for a host (exit 22 on an HTTP error, 28 on a timeout)
    /// with its headers — the access key's id and the signature, never the
    /// secret — read from `file` (`-H @file`, curl
    /// ≥ 7.55; `-` for stdin), for when the access key's id must stay out of
    /// the host's process list: write the returned bytes to `file` first.
    pub(crate) fn curl_headers_in(&self, file: &str, body: Body<'_>) -> (Cmd, Vec<u8>) {
        let c = self.curl_head(body).args(["-H", &format!("@{file}")]);
        let headers: String = self
            .header_lines()
            .iter()
            .map(|h| h.clone() + "\n")
            .collect();
        (self.curl_tail(c, body), headers.into_bytes())
    }
}

/// Sign `req` at `now` with `key`, for garage's region.
pub(crate) fn sign(key: &S3Key, req: &Request, now: SystemTime) -> Signed {
    let path = canonical_path(&req.bucket, req.key.as_deref());
    let query = canonical_query(&req.query);
    let amz_date = amz_date(now);
    let authorization = authorization(
        key,
        REGION,
        req.method.as_str(),
        &path,
        &query,
        &[("host", &req.endpoint)],
        &req.payload_sha256,
        &amz_date,
    );
    // The URL carries the path and query exactly as signed: garage checks
    // the signature over the raw path it received.
    let url = match query.is_empty() {
        true => format!("http://{}{path}", req.endpoint),
        false => format!("http://{}{path}?{query}", req.endpoint),
    };
    Signed {
        method: req.method,
        url,
        authorization,
        amz_date,
        payload_sha256: req.payload_sha256.clone(),
    }
}

/// `YYYYMMDDTHHMMSSZ`, the signature's date.
fn amz_date(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{}Z", crate::log::utc_compact(secs))
}

/// SigV4's UriEncode: every byte but `A-Z a-z 0-9 - _ . ~` (and `/` when
/// `keep_slash`) as `%XX`, upper-case hex.
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/bucket` or `/bucket/key`, URI-encoded (the key's `/` kept).
fn canonical_path(bucket: &str, key: Option<&str>) -> String {
    let mut path = format!("/{}", uri_encode(bucket, false));
    if let Some(key) = key {
        path.push('/');
        path.push_str(&uri_encode(key, true));
    }
    path
}

/// Names and values URI-encoded (`/` too), `name=value`, sorted, joined by `&`.
fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request and its signed header names; `headers` are signed
/// besides `x-amz-content-sha256` and `x-amz-date`.
fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload_sha256: &str,
    amz_date: &str,
) -> (String, String) {
    let mut all: Vec<(String, &str)> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim()))
        .collect();
    all.push(("x-amz-content-sha256".into(), payload_sha256));
    all.push(("x-amz-date".into(), amz_date));
    all.sort();
    let lines: String = all.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let names = all
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let request = format!("{method}\n{path}\n{query}\n{lines}\n{names}\n{payload_sha256}");
    (request, names)
}

/// The `Authorization` header's value.
#[allow(clippy::too_many_arguments)]
fn authorization(
    key: &S3Key,
    region: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload_sha256: &str,
    amz_date: &str,
) -> String {
    let (request, names) =
        canonical_request(method, path, query, headers, payload_sha256, amz_date);
    let day = &amz_date[..8];
    let scope = format!("{day}/{region}/{SERVICE}/aws4_request");
    let to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(request.as_bytes()))
    );
    let mut k = hmac_sha256(format!("AWS4{}", key.secret).as_bytes(), day.as_bytes());
    for part in [region, SERVICE, "aws4_request"] {
        k = hmac_sha256(&k, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&k, to_sign.as_bytes()));
    format!(
        "{ALGORITHM} Credential={}/{scope},SignedHeaders={names},Signature={signature}",
        key.id
    )
}

/// HMAC-SHA256 (RFC 2104): SHA-256's block is 64 bytes.
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    crate::ops::file::hex(bytes)
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum S3Error {
    #[error("the S3 API answered {code}: {message}. Fix: see the garage log on that host (`journalctl -u garage`)")]
    Response { code: String, message: String },
    #[error("not a ListObjectsV2 result (it starts {start:?}). Fix: check that the endpoint is garage's S3 API (port 3900)")]
    NotAListing { start: String },
    #[error("<{tag}> is not closed in a ListObjectsV2 result (cut short?). Fix: run it again")]
    Unclosed { tag: &'static str },
    #[error("an object without a <Key> in a ListObjectsV2 result")]
    NoKey,
    #[error("object {key:?}: <Size> {text:?} is not a number")]
    BadSize { key: String, text: String },
    #[error("<IsTruncated> {text:?} is neither true nor false")]
    BadTruncated { text: String },
    #[error("a truncated ListObjectsV2 result without <NextContinuationToken>")]
    NoContinuationToken,
    #[error("unknown XML entity \"&{entity}\" in a ListObjectsV2 result")]
    BadEntity { entity: String },
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    pub key: String,
    pub size: u64,
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ListPage {
    pub objects: Vec<Object>,
    /// More keys follow: ask again with [`ListPage::next_token`].
    pub truncated: bool,
    pub next_token: Option<String>,
}

/// A ListObjectsV2 result (or an S3 error document) → its page.
pub(crate) fn parse_list(xml: &str) -> Result<ListPage, S3Error> {
    if let Some((_, error, _)) = element(xml, "Error")? {
        return Err(S3Error::Response {
            code: text(error, "Code")?.unwrap_or_default(),
            message: text(error, "Message")?.unwrap_or_default(),
        });
    }
    let Some((_, result, _)) = element(xml, "ListBucketResult")? else {
        return Err(S3Error::NotAListing {
            start: xml.chars().take(80).collect(),
        });
    };
    let mut page = ListPage::default();
    // The page's own fields sit outside its <Contents>.
    let mut outside = String::new();
    let mut rest = result;
    while let Some((before, contents, after)) = element(rest, "Contents")? {
        outside.push_str(before);
        let key = text(contents, "Key")?.ok_or(S3Error::NoKey)?;
        let size = text(contents, "Size")?.unwrap_or_default();
        let size = size.trim().parse().map_err(|_| S3Error::BadSize {
            key: key.clone(),
            text: size.clone(),
        })?;
        page.objects.push(Object { key, size });
        rest = after;
    }
    outside.push_str(rest);
    page.truncated = match text(&outside, "IsTruncated")?.as_deref().map(str::trim) {
        Some("true") => true,
        Some("false") | None => false,
        Some(other) => {
            return Err(S3Error::BadTruncated {
                text: other.to_string(),
            })
        }
    };
    page.next_token = text(&outside, "NextContinuationToken")?.filter(|t| !t.is_empty());
    if page.truncated && page.next_token.is_none() {
        return Err(S3Error::NoContinuationToken);
    }
    Ok(page)
}

/// The first `<tag …>…</tag>` (or `<tag/>`) in `xml`: the text before it,
/// its content, the text after it.
fn element<'a>(
    xml: &'a str,
    tag: &'static str,
) -> Result<Option<(&'a str, &'a str, &'a str)>, S3Error> {
    let open = format!("<{tag}");
    let mut from = 0;
    while let Some(i) = xml[from..].find(&open).map(|i| from + i) {
        let after_name = &xml[i + open.len()..];
        // `<Key>` is not `<KeyCount>`.
        if !after_name.starts_with(['>', '/', ' ', '\t', '\r', '\n']) {
            from = i + open.len();
            continue;
        }
        let end = after_name.find('>').ok_or(S3Error::Unclosed { tag })?;
        let start_tag = &after_name[..end];
        let content_start = i + open.len() + end + 1;
        if start_tag.ends_with('/') {
            return Ok(Some((&xml[..i], "", &xml[content_start..])));
        }
        let close = format!("</{tag}>");
        let len = xml[content_start..]
            .find(&close)
            .ok_or(S3Error::Unclosed { tag })?;
        let content = &xml[content_start..content_start + len];
        return Ok(Some((
            &xml[..i],
            content,
            &xml[content_start + len + close.len()..],
        )));
    }
    Ok(None)
}

/// The unescaped text of the first `<tag>` in `xml`.
fn text(xml: &str, tag: &'static str) -> Result<Option<String>, S3Error> {
    element(xml, tag)?
        .map(|(_, content, _)| unescape(content))
        .transpose()
}

/// XML text → its characters: the five named entities and `&#…;` references.
fn unescape(text: &str) -> Result<String, S3Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let bad = || S3Error::BadEntity {
            entity: after.chars().take(12).collect(),
        };
        let end = after.find(';').ok_or_else(bad)?;
        let name = &after[..end];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = match name.strip_prefix("#x").or(name.strip_prefix("#X")) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => name.strip_prefix('#').and_then(|d| d.parse().ok()),
                };
                code.and_then(char::from_u32).ok_or_else(bad)?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // AWS's examples in "Signature Calculations for the Authorization Header:
    // Transferring Payload in a Single Chunk" (Amazon S3 API reference).
    const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const AWS_HOST: &str = "examplebucket.s3.amazonaws.com";
    const AWS_DATE: &str = "20130524T000000Z";

    fn aws_key() -> S3Key {
        S3Key::new(AWS_ID, AWS_SECRET)
    }

    /// 2013-05-24T00:00:00Z.
    fn aws_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    fn signature_of(authorization: &str) -> &str {
        authorization.rsplit_once("Signature=").unwrap().1
    }

    #[test]
    fn the_signature_date_is_utc() {
        assert_eq!(amz_date(aws_time()), AWS_DATE);
        assert_eq!(
            amz_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "20231114T221320Z"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2, and test case 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signs_aws_get_object_example() {
        let headers = [("Host", AWS_HOST), ("Range", "bytes=0-9")];
        let (request, names) =
            canonical_request("GET", "/test.txt", "", &headers, EMPTY_SHA256, AWS_DATE);
        assert_eq!(names, "host;range;x-amz-content-sha256;x-amz-date");
        // The hash AWS prints in the example's StringToSign.
        assert_eq!(
            hex(&Sha256::digest(request.as_bytes())),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        let auth = authorization(
            &aws_key(),
            "us-east-1",
            "GET",
            "/test.txt",
            "",
            &headers,
            EMPTY_SHA256,
            AWS_DATE,
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn signs_aws_put_object_example() {
        // PUT /test$file.text: the `$` is encoded in the canonical path.
        let body = "Welcome to Amazon S3.";
        let payload = hex(&Sha256::digest(body.as_bytes()));
        assert_eq!(
            payload,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let path = format!("/{}", uri_encode("test$file.text", true));
        assert_eq!(path, "/test%24file.text");
        let auth = authorization(
            &aws_key(),
            "us-east-1",
            "PUT",
            &path,
            "",
            &[
                ("Host", AWS_HOST),
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            &payload,
            AWS_DATE,
        );
        assert!(auth.contains(
            ",SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
        ));
        assert_eq!(
            signature_of(&auth),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn signs_aws_list_objects_example_with_a_sorted_query() {
        let query = canonical_query(&[
            ("prefix".into(), "J".into()),
            ("max-keys".into(), "2".into()),
        ]);
        assert_eq!(query, "max-keys=2&prefix=J");
        let auth = authorization(
            &aws_key(),
            "us-east-1",
            "GET",
            "/",
            &query,
            &[("host", AWS_HOST)],
            EMPTY_SHA256,
            AWS_DATE,
        );
        assert_eq!(
            signature_of(&auth),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn query_names_and_values_are_encoded_then_sorted() {
        let q = canonical_query(&[
            ("prefix".into(), "layers/sha256:ab cd+e~f".into()),
            ("list-type".into(), "2".into()),
            ("continuation-token".into(), "a/b=c&d".into()),
            ("b".into(), "".into()),
        ]);
        assert_eq!(
            q,
            "b=&continuation-token=a%2Fb%3Dc%26d&list-type=2&prefix=layers%2Fsha256%3Aab%20cd%2Be~f"
        );
        assert_eq!(canonical_query(&[]), "");
        // Sorted by the encoded names: `%` (0x25) before letters.
        assert_eq!(
            canonical_query(&[("a".into(), "1".into()), ("!".into(), "2".into())]),
            "%21=2&a=1"
        );
    }

    #[test]
    fn paths_are_path_style_and_encoded_per_segment() {
        assert_eq!(canonical_path("mesh-images", None), "/mesh-images");
        assert_eq!(
            canonical_path("mesh-images", Some("layers/sha256:ab é")),
            "/mesh-images/layers/sha256%3Aab%20%C3%A9"
        );
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("AZaz09-_.~", false), "AZaz09-_.~");
    }

    #[test]
    fn a_garage_request_is_signed_over_its_host_path_and_payload() {
        let key = S3Key::new("GK1", "secret");
        let put = Request::put("127.0.0.1:3900", IMAGES_BUCKET, "l/a b", &"ab".repeat(32));
        let signed = sign(&key, &put, aws_time());
        assert_eq!(signed.url, "http://127.0.0.1:3900/mesh-images/l/a%20b");
        assert!(signed.authorization.starts_with(
            "AWS4-HMAC-SHA256 Credential=GK1/20130524/garage/s3/aws4_request,SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature="
        ));
        // Bound to each part: another payload, path, endpoint, time or secret signs differently.
        let sig = signature_of(&signed.authorization).to_string();
        let mut other = put.clone();
        other.payload_sha256 = "cd".repeat(32);
        let variants = [
            sign(&key, &other, aws_time()),
            sign(
                &key,
                &Request::put("127.0.0.1:3900", IMAGES_BUCKET, "l/a c", &"ab".repeat(32)),
                aws_time(),
            ),
            sign(
                &key,
                &Request::put("10.0.0.1:3900", IMAGES_BUCKET, "l/a b", &"ab".repeat(32)),
                aws_time(),
            ),
            sign(&key, &put, aws_time() + Duration::from_secs(1)),
            sign(&S3Key::new("GK1", "secreT"), &put, aws_time()),
        ];
        for v in &variants {
            assert_ne!(signature_of(&v.authorization), sig, "{v:?}");
        }
        // The canonical request garage rebuilds from what curl sends.
        let (request, _) = canonical_request(
            "PUT",
            "/mesh-images/l/a%20b",
            "",
            &[("host", "127.0.0.1:3900")],
            &"ab".repeat(32),
            AWS_DATE,
        );
        assert_eq!(
            request,
            format!("PUT\n/mesh-images/l/a%20b\n\nhost:127.0.0.1:3900\nx-amz-content-sha256:{}\nx-amz-date:20130524T000000Z\n\nhost;x-amz-content-sha256;x-amz-date\n{}", "ab".repeat(32), "ab".repeat(32))
        );
    }

    #[test]
    fn the_curl_commands_carry_the_signature_never_the_secret() {
        let key = S3Key::new("GK1", "the-secret");
        let at = aws_time();
        let ep = "127.0.0.1:3900";
        let put = sign(
            &key,
            &Request::put(ep, IMAGES_BUCKET, "l/x", &"ab".repeat(32)),
            at,
        );
        let sig = |s: &Signed| signature_of(&s.authorization).to_string();
        // The signature travels in the headers file, never on the command line.
        let headers = |s: &Signed| {
            let (cmd, file) = s.curl_headers_in(".h", Body::None);
            let file = String::from_utf8(file).unwrap();
            assert!(file.contains(&format!("Signature={}\n", sig(s))), "{file}");
            assert!(!cmd.build().contains("Credential"));
            "-H @.h"
        };
        let transfer = "--max-time 900 --speed-limit 1024 --speed-time 60";
        assert_eq!(
            put.curl_headers_in(".h", Body::Upload("/var/lib/mesh/images/x.zst")).0.build(),
            format!("curl -fsS --globoff --path-as-is --connect-timeout 10 {transfer} {} -T /var/lib/mesh/images/x.zst http://127.0.0.1:3900/mesh-images/l/x", headers(&put))
        );
        let get = sign(&key, &Request::get(ep, IMAGES_BUCKET, "l/x"), at);
        assert_eq!(
            get.curl_headers_in(".h", Body::Download("/tmp/x")).0.build(),
            format!("curl -fsS --globoff --path-as-is --connect-timeout 10 {transfer} {} -o /tmp/x http://127.0.0.1:3900/mesh-images/l/x", headers(&get))
        );
        let delete = sign(&key, &Request::delete(ep, IMAGES_BUCKET, "l/x"), at);
        assert_eq!(
            delete.curl_headers_in(".h", Body::None).0.build(),
            format!("curl -fsS --globoff --path-as-is --connect-timeout 10 --max-time 60 -X DELETE {} http://127.0.0.1:3900/mesh-images/l/x", headers(&delete))
        );
        let list = sign(
            &key,
            &Request::list(ep, IMAGES_BUCKET, "l/", Some("t/1")),
            at,
        );
        assert_eq!(
            list.curl_headers_in(".h", Body::None).0.build(),
            format!("curl -fsS --globoff --path-as-is --connect-timeout 10 --max-time 60 {} 'http://127.0.0.1:3900/mesh-images?continuation-token=t%2F1&list-type=2&prefix=l%2F'", headers(&list))
        );
        for s in [&put, &get, &delete, &list] {
            for body in [Body::None, Body::Download("/tmp/x")] {
                assert!(!s
                    .curl_headers_in(".h", body)
                    .0
                    .build()
                    .contains("the-secret"));
            }
        }
        assert!(!format!("{key:?}").contains("the-secret"));
    }

    #[test]
    fn headers_on_stdin_keep_the_key_id_out_of_the_command() {
        let key = S3Key::new("GK1abc", "the-secret");
        let get = sign(
            &key,
            &Request::get("127.0.0.1:3900", IMAGES_BUCKET, "l/x"),
            aws_time(),
        );
        let (cmd, stdin) = get.curl_headers_in("-", Body::Download("/tmp/x"));
        let cmd = cmd.build();
        assert_eq!(
            cmd,
            "curl -fsS --globoff --path-as-is --connect-timeout 10 --max-time 900 --speed-limit 1024 --speed-time 60 -H @- -o /tmp/x http://127.0.0.1:3900/mesh-images/l/x"
        );
        let stdin = String::from_utf8(stdin).unwrap();
        assert_eq!(
            stdin,
            format!(
                "Authorization: {}\nx-amz-date: 20130524T000000Z\nx-amz-content-sha256: {EMPTY_SHA256}\n",
                get.authorization
            )
        );
        assert!(!cmd.contains("GK1abc") && !stdin.contains("the-secret"));
    }

    #[test]
    fn the_images_key_comes_from_secrets_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.env");
        std::fs::write(&path, "IMAGES_KEY=GKimg\n").unwrap();
        assert_eq!(images_key(&Secrets::load(&path).unwrap()), None);
        std::fs::write(&path, "IMAGES_KEY=GKimg\nIMAGES_SECRET=s3cr3t\n").unwrap();
        let key = images_key(&Secrets::load(&path).unwrap()).unwrap();
        assert_eq!(key, S3Key::new("GKimg", "s3cr3t"));
        assert_eq!(
            format!("{key:?}"),
            "S3Key { id: \"GKimg\", secret: \"<redacted>\" }"
        );
    }

    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>mesh-images</Name><Prefix>layers/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated><ContinuationToken>AAA</ContinuationToken><NextContinuationToken>bGF5ZXJz&amp;Lw==</NextContinuationToken><Contents><Key>layers/a&amp;b &lt;1&gt; &quot;&apos;&#233;&#x263A;</Key><LastModified>2025-01-01T00:00:00.000Z</LastModified><ETag>&quot;d41d8&quot;</ETag><Size>42</Size><StorageClass>STANDARD</StorageClass></Contents><Contents>
  <Key>layers/sha256:ff</Key>
  <Size>1234567890123</Size>
</Contents></ListBucketResult>"#;

    #[test]
    fn parses_a_truncated_page_with_entities_in_its_keys() {
        let page = parse_list(PAGE).unwrap();
        assert_eq!(
            page,
            ListPage {
                objects: vec![
                    Object {
                        key: "layers/a&b <1> \"'é☺".into(),
                        size: 42
                    },
                    Object {
                        key: "layers/sha256:ff".into(),
                        size: 1_234_567_890_123
                    },
                ],
                truncated: true,
                next_token: Some("bGF5ZXJz&Lw==".into()),
            }
        );
    }

    #[test]
    fn parses_the_last_and_an_empty_page() {
        let last = "<ListBucketResult><Name>b</Name><Prefix></Prefix><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>0</Size></Contents></ListBucketResult>";
        let page = parse_list(last).unwrap();
        assert_eq!(
            page.objects,
            vec![Object {
                key: "k".into(),
                size: 0
            }]
        );
        assert!(!page.truncated && page.next_token.is_none());
        let empty = "<?xml version=\"1.0\"?><ListBucketResult><Name>b</Name><Prefix/><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(parse_list(empty).unwrap(), ListPage::default());
    }

    #[test]
    fn unreadable_listings_are_errors() {
        let err = |xml: &str| parse_list(xml).unwrap_err();
        assert_eq!(
            err(
                "<Error><Code>AccessDenied</Code><Message>Forbidden: no such key</Message></Error>"
            ),
            S3Error::Response {
                code: "AccessDenied".into(),
                message: "Forbidden: no such key".into()
            }
        );
        assert!(matches!(err("<html>"), S3Error::NotAListing { .. }));
        assert_eq!(
            err("<ListBucketResult><Contents>"),
            S3Error::Unclosed {
                tag: "ListBucketResult"
            }
        );
        assert!(err("nothing").to_string().contains("Fix:"));
        assert_eq!(
            err("<ListBucketResult><Contents><Key>k</Key><Size>1</Size></ListBucketResult>"),
            S3Error::Unclosed { tag: "Contents" }
        );
        assert_eq!(
            err("<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>"),
            S3Error::NoKey
        );
        assert_eq!(
            err("<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents></ListBucketResult>"),
            S3Error::BadSize {
                key: "k".into(),
                text: "-1".into()
            }
        );
        assert_eq!(
            err("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>"),
            S3Error::NoContinuationToken
        );
        assert_eq!(
            err("<ListBucketResult><IsTruncated>yes</IsTruncated></ListBucketResult>"),
            S3Error::BadTruncated { text: "yes".into() }
        );
        for bad in ["&nbsp;", "&#xD800;", "& b", "&#x;"] {
            let xml = format!("<ListBucketResult><Contents><Key>{bad}</Key><Size>1</Size></Contents></ListBucketResult>");
            assert!(matches!(err(&xml), S3Error::BadEntity { .. }), "{bad}");
        }
    }
}
