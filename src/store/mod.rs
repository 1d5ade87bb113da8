//! The store boundary: where the sink's batches go. PostgreSQL (`postgres`, the
//! production store: partitions, COPY, several writers) or one embedded SQLite
//! file (`sqlite`: one writer thread, durable commits). The sink hands a
//! [`Writer`] records and gets back what was [`Written`] or a classified
//! [`WriteError`]; it does not know which store it talks to.

pub mod contains;
pub mod postgres;
pub mod sqlite;

use crate::metrics::Metrics;
use crate::model::envelope::Record;

/// The source of a [`WriteError`], whichever store raised it.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store could not take the batch now; the same batch will succeed later.
    #[error("database unavailable ({cause})")]
    Unavailable {
        cause: &'static str,
        #[source]
        source: Option<Cause>,
    },
    /// The store refused something in the data: retrying the same rows fails again.
    #[error("database refused the batch")]
    Refused(#[source] Cause),
    /// A row was routed by partitions that changed before it was written: the
    /// statement sent it to the default partition while a partition for its time
    /// was being attached, and once it had the default partition's lock PostgreSQL
    /// checked that partition's new constraint and refused the row (a check
    /// violation naming no constraint; a table's own CHECK constraints are named).
    /// Written again, the rows are routed by the partitions as they are now.
    #[error("the table's partitions changed while the batch was routed")]
    Rerouted(#[source] Cause),
}

impl WriteError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, WriteError::Unavailable { .. })
    }

    /// Worth writing again a few times, but not forever: see [`WriteError::Rerouted`]
    /// (a row that fits no partition at all, with the default partition gone, fails
    /// the same way every time).
    pub fn is_rerouted(&self) -> bool {
        matches!(self, WriteError::Rerouted(_))
    }

    /// A bounded label for the retries metric: one of
    /// [`crate::metrics::WRITE_RETRY_CAUSES`].
    pub fn cause(&self) -> &'static str {
        match self {
            WriteError::Unavailable { cause, .. } => cause,
            WriteError::Refused(_) => "refused",
            WriteError::Rerouted(_) => "rerouted",
        }
    }
}

/// What one committed transaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// New event rows, by event type.
    pub stored: Vec<(String, u64)>,
    /// Events whose (id, source) was already stored or repeated in the batch.
    pub duplicates: u64,
    /// New dead-letter rows.
    pub dead_letters: u64,
    /// Dead letters already stored (redeliveries).
    pub dead_letter_duplicates: u64,
}

impl Written {
    pub fn stored_total(&self) -> u64 {
        self.stored.iter().map(|(_, n)| n).sum()
    }

    pub fn absorb(&mut self, other: Written) {
        for (t, n) in other.stored {
            match self.stored.iter_mut().find(|(s, _)| *s == t) {
                Some((_, m)) => *m += n,
                None => self.stored.push((t, n)),
            }
        }
        self.duplicates += other.duplicates;
        self.dead_letters += other.dead_letters;
        self.dead_letter_duplicates += other.dead_letter_duplicates;
    }
}

/// One of the sink's writers: a batch at a time, each in one transaction.
pub enum Writer {
    /// Its own PostgreSQL connection (boxed: its statements and buffer are
    /// large beside a handle).
    Postgres(Box<postgres::write::Writer>),
    /// A handle on the SQLite file's one writer thread.
    Sqlite(sqlite::write::Handle),
}

impl Writer {
    /// Writes `records` in one transaction. On any error nothing was committed.
    pub async fn write(
        &mut self,
        records: &[&Record],
        metrics: &Metrics,
    ) -> Result<Written, WriteError> {
        match self {
            Writer::Postgres(w) => w.write(records, metrics).await,
            Writer::Sqlite(w) => w.write(records, metrics).await,
        }
    }
}
