//! The trail's identity, checked before an instance starts: the key its
//! checkpoints are signed with, and whether its leaves must be attested. An
//! instance that would break either does not start (exit 2, naming the
//! variable), rather than write what `verify` would later call forged.

use tokio_postgres::GenericClient;

use super::note::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    #[error(
        "this trail's checkpoints are signed by {expected}, and this key is {found}: give every instance the same key file (docs/AUDIT.md, \"Keys\")"
    )]
    OtherKey { expected: String, found: String },
    #[error(
        "every leaf of this trail from leaf {from} on is attested, and AUDIT_KEY is not set here: set it as the other instances have it (docs/AUDIT.md, \"Keys\")"
    )]
    NeedsKey { from: i64 },
    #[error(
        "this cluster's transaction ids ({current}) are behind the stored rows' ({stored}): restored from a logical dump into a new cluster? New rows would sort before stored ones in the live tail and the audit tree. Advance the cluster's transaction id past {stored} first (docs/AUDIT.md, \"Moving to a new cluster\")"
    )]
    Behind { current: i64, stored: i64 },
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
}

impl TrailError {
    /// The variable to name when the instance refuses to start.
    pub fn variable(&self) -> Option<&'static str> {
        match self {
            TrailError::OtherKey { .. } => Some("SIGNING_KEY_FILE"),
            TrailError::NeedsKey { .. } => Some("AUDIT_KEY"),
            TrailError::Behind { .. } | TrailError::Db(_) => None,
        }
    }
}

/// Checks that an instance with `signer` (and AUDIT_KEY when `attests`) keeps
/// to the trail. Nothing to check before the trail's first checkpoint, or
/// while migration 0019 is pending.
pub async fn check_start(
    client: &impl GenericClient,
    signer: &SigningKey,
    attests: bool,
) -> Result<(), TrailError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('audit_trail') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(());
    }
    check_order(client).await?;
    let Some(row) = client
        .query_opt("SELECT public_key, attested_from FROM audit_trail", &[])
        .await?
    else {
        return Ok(());
    };
    let expected: String = row.get(0);
    let found = signer.verifier().encode();
    if expected != found {
        return Err(TrailError::OtherKey { expected, found });
    }
    if let (Some(from), false) = (row.get::<_, Option<i64>>(1), attests) {
        return Err(TrailError::NeedsKey { from });
    }
    Ok(())
}

/// Refuses a cluster whose transaction ids are behind the stored rows' (a
/// logical dump restored into a new cluster): the tail and the tree order rows
/// by the transaction that wrote them.
pub async fn check_order(client: &impl GenericClient) -> Result<(), TrailError> {
    let row = client
        .query_one(
            "SELECT pg_current_xact_id()::text::bigint, greatest( \
               (SELECT txid FROM audit_leaves ORDER BY txid DESC, seq DESC LIMIT 1), \
               (SELECT txid FROM events ORDER BY txid DESC, seq DESC LIMIT 1))",
            &[],
        )
        .await?;
    let (current, stored): (i64, Option<i64>) = (row.get(0), row.get(1));
    match stored {
        Some(stored) if stored >= current => Err(TrailError::Behind { current, stored }),
        _ => Ok(()),
    }
}
