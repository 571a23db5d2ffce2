//! Renewals on the wire: which renewals need not be gossiped at once.
//!
//! Under a steady load nearly every write is a renewal that only moves a deadline later; every
//! node already holds the lease live until the deadline it last heard. Such a renewal can wait
//! in the node that took it until the deadline its peers know comes near, and only the latest
//! one is then written: a client renewing every TTL/5 costs one record per ~3/4 TTL instead of
//! five. Expiry is unchanged: every node (this one included, whose registry also holds the
//! gossiped record until the flush) keeps computing it from the same records, and a deferred
//! renewal is written at least `margin + ttl/4` before the deadline the others hold, so they
//! have it in time. A node that stops with deferred renewals loses them: the cluster then
//! holds the lease until the last deadline written, at least `margin + ttl/4` ahead.

use super::Lease;

/// When the renewal `new` may wait instead of being written now, given the lease's winning
/// record `current` and whether that record is our own (in our keyspace: peers have it or will
/// get it from us). Returns the instant by which it must be written, or `None` to write it now:
/// it changes more than the deadline (TTL, meta, a deregistration on either side), it moves
/// the deadline earlier, the winning record is a peer's, or the known deadline is too near.
pub fn defer_until(
    current: &Lease,
    ours: bool,
    new: &Lease,
    now_ms: u64,
    margin_ms: u64,
) -> Option<u64> {
    if !(ours && current.extended_by(new)) {
        return None;
    }
    let flush_at = current
        .deadline_ms
        .checked_sub(new.ttl_ms / 4)?
        .checked_sub(margin_ms)?;
    (flush_at > now_ms).then_some(flush_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Stamp;
    use proptest::prelude::*;

    fn lease(at: u64, ttl: u64, weight: bool) -> Lease {
        let mut meta = std::collections::BTreeMap::new();
        if weight {
            meta.insert("weight".to_string(), "5".to_string());
        }
        Lease {
            stamp: Stamp(at, 0, "a".into()),
            deadline_ms: at + ttl,
            ttl_ms: ttl,
            meta,
        }
    }

    #[test]
    fn a_renewal_every_fifth_of_the_ttl_waits_until_a_quarter_and_the_margin_are_left() {
        let written = lease(0, 10_000, false);
        assert_eq!(
            defer_until(&written, true, &lease(2_000, 10_000, false), 2_000, 2_000),
            Some(5_500)
        );
        assert_eq!(
            defer_until(&written, true, &lease(4_000, 10_000, false), 4_000, 2_000),
            Some(5_500)
        );
        assert_eq!(
            defer_until(&written, true, &lease(6_000, 10_000, false), 6_000, 2_000),
            None
        );
        // A peer's record, another TTL or meta, a deregistration: written now.
        assert_eq!(
            defer_until(&written, false, &lease(2_000, 10_000, false), 2_000, 2_000),
            None
        );
        assert_eq!(
            defer_until(&written, true, &lease(2_000, 20_000, false), 2_000, 2_000),
            None
        );
        assert_eq!(
            defer_until(&written, true, &lease(2_000, 10_000, true), 2_000, 2_000),
            None
        );
        let mut dereg = lease(2_000, 0, false);
        dereg.deadline_ms = 2_000;
        assert_eq!(defer_until(&written, true, &dereg, 2_000, 2_000), None);
    }

    proptest! {
        /// A renewal that waits leaves the lease live everywhere, with at least the margin and a
        /// quarter of the TTL to spare at the instant it must be written, and changes nothing
        /// but the deadline, later.
        #[test]
        fn a_deferred_renewal_changes_only_the_deadline_and_is_due_in_time(
            at in 0u64..20_000, ttl in 0u64..30_000, weight in any::<bool>(), ours in any::<bool>(),
            later in 0u64..40_000, new_ttl in 0u64..30_000, new_weight in any::<bool>(),
            margin in 0u64..5_000,
        ) {
            let current = lease(at, ttl, weight);
            let now = at + later;
            let new = lease(now, new_ttl, new_weight);
            if let Some(due) = defer_until(&current, ours, &new, now, margin) {
                prop_assert!(ours);
                prop_assert!(due > now);
                prop_assert!(current.deadline_ms >= due + margin + new.ttl_ms / 4);
                prop_assert!(current.is_live(now) && new.deadline_ms >= current.deadline_ms);
                prop_assert_eq!((current.ttl_ms, &current.meta), (new.ttl_ms, &new.meta));
            }
        }
    }
}
