//! Reads of the message log that a client asks for: a join's replay and
//! history pages. Any client can ask for many at once (a tab that joins
//! with `since: 0`, then another), so they go through a few lanes, fewer
//! than the pool's connections: however many are waiting, the message
//! store, the notifier and the access checks still find a connection.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::messages::Entry;
use super::models::MessageRow;
use super::{Db, DbError};

/// Reads of the log that clients can cause, through a bounded number of
/// lanes. Cheap to clone: every clone shares the lanes.
#[derive(Clone)]
pub struct ClientReads {
    db: Db,
    lanes: Arc<Semaphore>,
}

/// Estimates a page's row count from the bytes still wanted, assuming rows
/// like the ones read so far; never fewer than this many rows.
const MIN_PAGE: i64 = 16;

impl ClientReads {
    /// Half the pool (at least one lane) serves clients' reads; the other
    /// half is always left to writers and short queries.
    pub fn new(db: Db, pool_size: usize) -> Self {
        ClientReads {
            db,
            lanes: Arc::new(Semaphore::new((pool_size / 2).max(1))),
        }
    }

    async fn lane(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.lanes
            .acquire()
            .await
            .expect("the lanes are never closed")
    }

    /// The entries after `after`, up to `up_to`, at most `max_rows` of
    /// them, stopping after the one whose frame's text reaches `max_bytes`
    /// in all ([`Entry::shown_bytes`]).
    /// Rows are read in pages sized from the bytes still wanted, so a
    /// backlog of large messages is not read in full to keep a few.
    pub async fn after(
        &self,
        room: &str,
        after: i64,
        up_to: i64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, DbError> {
        let _lane = self.lane().await;
        let mut rows: Vec<MessageRow> = Vec::new();
        let mut bytes = 0usize;
        let mut until = after;
        while until < up_to && rows.len() < max_rows && bytes < max_bytes {
            let want = page_rows(max_rows - rows.len(), max_bytes - bytes, bytes, rows.len());
            let page = self.db.messages_after(room, until, up_to, want).await?;
            let short = (page.len() as i64) < want;
            for row in page {
                if bytes >= max_bytes {
                    break;
                }
                bytes += row.body.len();
                until = row.seq;
                rows.push(row);
            }
            if short {
                break;
            }
        }
        // The rows' own bodies chose the page; what the frames show (an
        // edit carries the edited text) bounds it, by the same rule.
        let mut entries = self.db.with_context(rows).await?;
        let mut shown = 0usize;
        let keep = entries
            .iter()
            .position(|entry| {
                shown += entry.shown_bytes();
                shown >= max_bytes
            })
            .map_or(entries.len(), |at| at + 1);
        entries.truncate(keep);
        Ok(entries)
    }

    /// Up to `limit` messages before `before`, newest first, and whether
    /// older ones remain.
    pub async fn before(
        &self,
        room: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<Entry>, bool), DbError> {
        let _lane = self.lane().await;
        let (rows, has_more) = self.db.messages_before(room, before, limit).await?;
        Ok((self.db.with_context(rows).await?, has_more))
    }
}

/// How many rows to ask for next: all that may still be kept when nothing
/// is known of the rows' size, else enough rows of the average size seen
/// to reach the bytes still wanted (plus one, to cross the limit).
fn page_rows(rows_left: usize, bytes_left: usize, bytes_read: usize, rows_read: usize) -> i64 {
    let by_bytes = if rows_read == 0 || bytes_read == 0 {
        MIN_PAGE.max(rows_left.min(64) as i64)
    } else {
        let average = (bytes_read / rows_read).max(1);
        (bytes_left / average + 1) as i64
    };
    by_bytes.max(MIN_PAGE).min(rows_left as i64)
}

#[cfg(test)]
mod tests {
    use super::page_rows;

    #[test]
    fn the_first_page_is_small_and_later_ones_follow_the_bytes_left() {
        // Nothing read yet: a first page of at most 64 rows.
        assert_eq!(page_rows(500, 262_144, 0, 0), 64);
        assert_eq!(page_rows(10, 262_144, 0, 0), 10);
        // 64 rows of 4 KB read, 6 KB wanted: two more rows (at least 16).
        assert_eq!(page_rows(436, 6_144, 256_000, 64), 16);
        // Small rows: as many as the bytes left allow, within the rows left.
        assert_eq!(page_rows(436, 200_000, 6_400, 64), 436);
        assert_eq!(page_rows(436, 20_000, 6_400, 64), 201);
    }
}
