//! Session tokens as JSON Web Tokens, implementing the `TokenService` port.
//!
//! HS256 only: the algorithm is pinned on verification, so a token that claims `none`, or an
//! asymmetric algorithm (the RS/HS confusion), is refused. Each token carries a random `jti`
//! so it can be revoked on its own.

use application::ports::{IssuedToken, TokenClaims, TokenError, TokenService};
use chrono::{DateTime, Duration, Utc};
use domain::{Timestamp, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    jti: String,
    iat: i64,
    exp: i64,
}

pub struct JwtTokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl JwtTokenService {
    pub fn new(secret: &SecretString, ttl: std::time::Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            // A TTL beyond chrono's range is a configuration mistake; cap it at 10 years.
            ttl: Duration::from_std(ttl).unwrap_or(Duration::days(3650)).min(Duration::days(3650)),
        }
    }
}

impl TokenService for JwtTokenService {
    fn issue(&self, user: &UserId, now: Timestamp) -> Result<IssuedToken, TokenError> {
        let expires_at = now + self.ttl;
        let claims = Claims {
            sub: user.to_string(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Issue)?;
        Ok(IssuedToken {
            token,
            claims: TokenClaims {
                user_id: user.clone(),
                token_id: claims.jti,
                expires_at: DateTime::from_timestamp(claims.exp, 0).ok_or(TokenError::Issue)?,
            },
        })
    }

    fn verify(&self, token: &str, now: Timestamp) -> Result<TokenClaims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry is checked below against the injected clock, with no leeway.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| TokenError::Invalid)?;
        let claims = data.claims;
        if claims.exp <= now.timestamp() || claims.jti.is_empty() {
            return Err(TokenError::Invalid);
        }
        Ok(TokenClaims {
            user_id: UserId::parse(&claims.sub).map_err(|_| TokenError::Invalid)?,
            token_id: claims.jti,
            expires_at: DateTime::<Utc>::from_timestamp(claims.exp, 0).ok_or(TokenError::Invalid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn service(secret: &str) -> JwtTokenService {
        JwtTokenService::new(&SecretString::from(secret), std::time::Duration::from_secs(3600))
    }

    #[test]
    fn an_issued_token_verifies_to_its_claims() {
        let tokens = service("a-secret-that-is-long-enough-for-tests");
        let user = UserId::generate();
        let now = Utc::now();
        let issued = tokens.issue(&user, now).unwrap();
        let claims = tokens.verify(&issued.token, now).unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.user_id, user);
        assert_eq!(claims.expires_at.timestamp(), now.timestamp() + 3600);
    }

    #[test]
    fn each_token_has_its_own_id() {
        let tokens = service("s3cret-s3cret-s3cret-s3cret-s3cret");
        let user = UserId::generate();
        let a = tokens.issue(&user, Utc::now()).unwrap();
        let b = tokens.issue(&user, Utc::now()).unwrap();
        assert_ne!(a.claims.token_id, b.claims.token_id);
    }

    #[test]
    fn an_expired_token_is_invalid() {
        let tokens = service("s3cret-s3cret-s3cret-s3cret-s3cret");
        let issued = tokens.issue(&UserId::generate(), Utc::now()).unwrap();
        let later = Utc::now() + Duration::seconds(3600);
        assert_eq!(tokens.verify(&issued.token, later), Err(TokenError::Invalid));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_invalid() {
        let issued =
            service("one-secret-one-secret-one-secret").issue(&UserId::generate(), Utc::now()).unwrap();
        let other = service("another-secret-another-secret-xx");
        assert_eq!(other.verify(&issued.token, Utc::now()), Err(TokenError::Invalid));
    }

    #[test]
    fn an_unsigned_alg_none_token_is_invalid() {
        let tokens = service("s3cret-s3cret-s3cret-s3cret-s3cret");
        let issued = tokens.issue(&UserId::generate(), Utc::now()).unwrap();
        let payload = issued.token.split('.').nth(1).unwrap();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        for forged in [format!("{header}.{payload}."), format!("{header}.{payload}")] {
            assert_eq!(tokens.verify(&forged, Utc::now()), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn a_token_claiming_another_algorithm_is_invalid() {
        let tokens = service("s3cret-s3cret-s3cret-s3cret-s3cret");
        let issued = tokens.issue(&UserId::generate(), Utc::now()).unwrap();
        let mut parts = issued.token.split('.');
        let (_, payload, signature) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        for alg in ["HS512", "RS256", "ES256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let forged = format!("{header}.{payload}.{signature}");
            assert_eq!(tokens.verify(&forged, Utc::now()), Err(TokenError::Invalid), "{alg}");
        }
    }

    #[test]
    fn garbage_is_invalid() {
        let tokens = service("s3cret-s3cret-s3cret-s3cret-s3cret");
        for garbage in ["", "a.b.c", "not a token", "....."] {
            assert_eq!(tokens.verify(garbage, Utc::now()), Err(TokenError::Invalid));
        }
    }
}
