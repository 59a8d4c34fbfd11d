//! Redaction of secrets in text that leaves the process (logs, `/health`, error bodies, dead
//! letters, `esk doctor`): a URL's password and its secret-looking query parameters become
//! `***`, and so do the values of secret settings (librdkafka properties such as `sasl.password`).
//! One function each, used everywhere a URL, a message holding one, or a setting is shown.

/// What a redacted secret reads as.
pub const REDACTED: &str = "***";

/// Query parameters whose values are secrets (compared case-insensitively, `-` read as `_`).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "client_secret",
    "auth",
    "authorization",
    "signature",
    "sig",
    "sslpassword",
    "credentials",
];

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    SECRET_PARAMS.contains(&name.as_str())
        || name.ends_with("_token")
        || name.ends_with("_secret")
        || name.ends_with("_password")
        || name.ends_with("_key")
}

/// Words that make a setting's value secret wherever they appear in its name
/// (`sasl.password`, `ssl.keystore.password`, `sasl.oauthbearer.client.secret`,
/// `sasl.oauthbearer.assertion.private.key.passphrase`).
const SECRET_SETTING_WORDS: &[&str] =
    &["password", "secret", "passphrase", "private", "credential"];

/// Settings whose values are secrets although no word of [`SECRET_SETTING_WORDS`] says so: an
/// inline private key, and OAUTHBEARER's free-form configuration.
const SECRET_SETTINGS: &[&str] = &["ssl.key.pem", "ssl_key", "sasl.oauthbearer.config"];

/// Whether the value of the setting `name` (a librdkafka property such as `sasl.password`) is a
/// secret, never to be shown: such values read as [`REDACTED`] in `Debug`, logs and messages.
pub fn is_secret_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_SETTING_WORDS.iter().any(|word| name.contains(word))
        || SECRET_SETTINGS.contains(&name.as_str())
}

/// `url` with its password (`user:password@`) and secret query parameters replaced by
/// [`REDACTED`]. Text that is not a URL comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:{REDACTED}{host}"),
                // A user name alone is no secret (and doctor shows whom it logs in as).
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    format!("{scheme}{authority}{}", redact_query(tail))
}

/// The secret parameters of the query in `text` (what follows its first `?`) redacted.
fn redact_query(text: &str) -> String {
    let Some(start) = text.find('?') else {
        return text.to_string();
    };
    let (before, query) = text.split_at(start + 1);
    let (query, fragment) = match query.find('#') {
        Some(hash) => query.split_at(hash),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{before}{}{fragment}", params.join("&"))
}

/// `text` with every URL in it redacted by [`redact_url`] (error messages quote URLs).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let start = rest[..found]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[found..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |i| found + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_url_passwords_and_secret_parameters() {
        assert_eq!(
            redact_url("postgres://esk:s3cret@db:5432/esk?sslmode=require&password=p"),
            "postgres://esk:***@db:5432/esk?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("https://user:pw@hooks.example/x?token=t&a=1#f"),
            "https://user:***@hooks.example/x?token=***&a=1#f"
        );
        // TLS settings are paths, not secrets: a verify-full URL keeps them.
        assert_eq!(
            redact_url(
                "postgres://esk:s3cret@db:5432/esk?sslmode=verify-full&sslrootcert=/etc/esk/ca.pem\
                 &sslcert=/etc/esk/c.pem&sslkey=/etc/esk/k.pem&sslpassword=kp"
            ),
            "postgres://esk:***@db:5432/esk?sslmode=verify-full&sslrootcert=/etc/esk/ca.pem\
             &sslcert=/etc/esk/c.pem&sslkey=/etc/esk/k.pem&sslpassword=***"
        );
        assert_eq!(redact_url("postgres://esk@h/db"), "postgres://esk@h/db");
        assert_eq!(redact_url("http://h:80/p?q=1"), "http://h:80/p?q=1");
        assert_eq!(redact_url("127.0.0.1:9092"), "127.0.0.1:9092");
        assert_eq!(redact_url("a/b?API-Key=k"), "a/b?API-Key=***");
    }

    #[test]
    fn knows_which_settings_are_secret() {
        for secret in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.truststore.password",
            "sasl.oauthbearer.client.secret",
            "SASL.PASSWORD",
            "ssl.key.pem",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret_setting(secret), "{secret}");
        }
        for plain in [
            "sasl.username",
            "sasl.mechanism",
            "security.protocol",
            "ssl.ca.location",
            "ssl.key.location",
            "client.id",
        ] {
            assert!(!is_secret_setting(plain), "{plain}");
        }
    }

    #[test]
    fn hides_every_url_in_a_message() {
        let message =
            "error sending request for url (https://u:SENTINEL@h/x?access_token=SENTINEL): \
                       connect to \"postgres://e:SENTINEL@db/esk\" failed";
        let redacted = redact_text(message);
        assert!(!redacted.contains("SENTINEL"), "{redacted}");
        assert!(
            redacted.contains("https://u:***@h/x?access_token=***"),
            "{redacted}"
        );
        assert!(redacted.contains("postgres://e:***@db/esk"), "{redacted}");
        assert_eq!(redact_text("no url here"), "no url here");
    }
}
