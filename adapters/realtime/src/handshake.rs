//! Where a handshake's token travels, the same for every endpoint that authenticates a
//! request (the REST routes, `/ws`, `/socket.io/`). Each transport reads the raw values out
//! of its own request type and hands them here.

/// The cookie that register and login set.
pub const COOKIE_NAME: &str = "token";

/// The token a request carries: an `Authorization: Bearer` header first (explicit), then
/// the [`COOKIE_NAME`] cookie, then a `token` query parameter for the endpoints that accept
/// one (`None` for the others). Other schemes and empty values carry no token.
pub fn presented_token(
    authorization: Option<&str>,
    cookie: Option<&str>,
    query: Option<&str>,
) -> Option<String> {
    let bearer = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    [bearer, cookie, query].into_iter().flatten().find(|token| !token.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_wins_over_the_cookie() {
        let token = presented_token(Some("Bearer from-header"), Some("from-cookie"), Some("q"));
        assert_eq!(token.as_deref(), Some("from-header"));
    }

    #[test]
    fn the_cookie_is_used_without_a_header() {
        assert_eq!(presented_token(None, Some("c"), Some("q")).as_deref(), Some("c"));
    }

    #[test]
    fn the_query_comes_last() {
        assert_eq!(presented_token(None, None, Some("q")).as_deref(), Some("q"));
    }

    #[test]
    fn other_schemes_and_empty_values_carry_no_token() {
        assert_eq!(presented_token(Some("Basic abc"), Some(""), None), None);
        assert_eq!(presented_token(Some("Bearer  "), None, Some("")), None);
    }
}
