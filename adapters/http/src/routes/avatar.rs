//! `GET /api/v1/user/{id}/avatar`: the picture the server draws for a user who chose none
//! (their initials on a colour of their id), so that showing a user list asks no other site
//! for pictures and so tells it nobody's name.

use actix_web::{web, HttpRequest, HttpResponse};
use application::AccountError;
use domain::{User, UserId};

use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::openapi::{NotFound, Unauthenticated, Unavailable, Validation};
use crate::state::AppState;

/// The picture is an image, never a document: nothing in it runs, loads or may be framed,
/// even when opened on its own.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; sandbox";

/// Background colours, each dark enough for white initials (contrast of 4.5:1 or more).
const PALETTE: [&str; 12] = [
    "#b91c1c", "#c2410c", "#a16207", "#4d7c0f", "#15803d", "#047857", "#0f766e", "#0e7490", "#1d4ed8",
    "#4338ca", "#7e22ce", "#be185d",
];

/// A user's generated picture (SVG); 304 when the `If-None-Match` validator still holds.
#[utoipa::path(
    get,
    path = "/api/v1/user/{id}/avatar",
    tag = "user",
    operation_id = "getAvatar",
    params(("id" = String, Path, description = "The user's id: a UUID, lower-case and hyphenated \
        (anything else is 400)", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The picture: initials on a colour of the user's id",
            content_type = "image/svg+xml", body = String,
            headers(("ETag" = String, description = "Validator for `If-None-Match`"),
                ("Cache-Control" = String, description = "`private, max-age=86400`"))),
        (status = 304, description = "The copy the client holds (`If-None-Match`) is current"),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn avatar(
    req: HttpRequest,
    state: web::Data<AppState>,
    _caller: CurrentUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = UserId::parse(&id).map_err(|e| ApiError::invalid_field("id", e))?;
    let user = match state.accounts.profile(&id).await {
        Ok(user) => user,
        // The caller's token was checked above: here it means that nobody has this id.
        Err(AccountError::Unauthenticated) => return Err(ApiError::not_found("user not found")),
        Err(e) => return Err(e.into()),
    };
    let svg = picture(&user);
    // A name changes seldom: a day's copy is fine, and the validator makes it cheap after.
    let cache_control = "private, max-age=86400";
    Ok(crate::web::validated(&req, svg, "image/svg+xml", cache_control, CONTENT_SECURITY_POLICY))
}

/// The SVG of `user`'s initials on the colour of their id.
fn picture(user: &User) -> String {
    let letters = escape(&initials(user.full_name.as_str(), user.username.as_str()));
    let colour = PALETTE[(fnv1a(user.id.as_str().as_bytes()) % PALETTE.len() as u64) as usize];
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"96\" height=\"96\" viewBox=\"0 0 96 96\" \
         role=\"img\" aria-label=\"{letters}\"><rect width=\"96\" height=\"96\" fill=\"{colour}\"/>\
         <text x=\"48\" y=\"48\" dy=\"0.35em\" text-anchor=\"middle\" fill=\"#ffffff\" \
         font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif\" \
         font-size=\"38\" font-weight=\"600\">{letters}</text></svg>"
    )
}

/// The first letter of the first and of the last word of the full name (one for a one-word
/// name), upper-cased; words that start with no letter or digit (an emoji) are passed over,
/// and a name of none at all falls back to the username's first letter.
fn initials(full_name: &str, username: &str) -> String {
    let firsts: Vec<char> = full_name
        .split_whitespace()
        .filter_map(|word| word.chars().next().filter(|c| c.is_alphanumeric()))
        .collect();
    let letters: Vec<char> = match firsts.as_slice() {
        [] => username.chars().filter(char::is_ascii_alphanumeric).take(1).collect(),
        [only] => vec![*only],
        [first, .., last] => vec![*first, *last],
    };
    letters.into_iter().flat_map(char::to_uppercase).collect()
}

fn escape(text: &str) -> String {
    text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
        out
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initials_are_the_first_and_last_words_first_letters() {
        assert_eq!(initials("Alice Martin", "alice"), "AM");
        assert_eq!(initials("ada  byron lovelace", "ada"), "AL");
        assert_eq!(initials("Zoë", "zoe"), "Z");
        assert_eq!(initials("étienne durand", "et"), "ÉD");
        assert_eq!(initials("山田 太郎", "yamada"), "山太");
    }

    #[test]
    fn a_name_without_letters_falls_back_to_the_username() {
        assert_eq!(initials("👩\u{200D}👩\u{200D}👧 ❤", "_bob"), "B");
        assert_eq!(initials("👍🏽 Carl", "x.y"), "C");
    }

    #[test]
    fn markup_in_initials_stays_text() {
        assert_eq!(escape("<&\"'>"), "&lt;&amp;&quot;&#39;&gt;");
        // `<` starts no word initial (it is no letter), yet escaping holds whatever comes.
        assert_eq!(initials("<script> Eve", "eve"), "E");
    }

    #[test]
    fn the_colour_depends_on_the_id_alone_and_spreads() {
        let colours: std::collections::HashSet<u64> =
            (0..200).map(|_| fnv1a(UserId::generate().as_str().as_bytes()) % PALETTE.len() as u64).collect();
        assert!(colours.len() > 6, "{colours:?}");
        assert_eq!(fnv1a(b"same"), fnv1a(b"same"));
    }
}
