//! Query building shared by the API's routes: the parameters
//! ([`params`]), page statements and reused plans ([`sql`]), where rows lie ([`span`]), pages of sparse
//! matches read partition by partition ([`walk`]), and totals ([`totals`]). Handlers parse with the first, read with the second, and shape
//! answers with `api::view`.

pub mod params;
pub mod span;
pub mod sql;
pub mod totals;
pub mod walk;

pub use params::{Cursor, EventFilters, EventQuery, Paging};
