//! The hashing workers: each stores blocks handed over by writers
//! (`put_block`, off the FUSE threads) and posts the result to the file's
//! slot.

use super::*;

pub(super) fn worker(shared: Arc<Shared>, rx: Receiver<Job>) {
    for job in rx {
        // A panic while storing is a failure of this block, reported to
        // its file like any other: a worker that died instead would leave
        // the slot `Hashing` and its committer waiting.
        let store = std::panic::AssertUnwindSafe(|| match is_zero(&job.data) {
            true => Ok(None),
            false => shared.live().and_then(|l| {
                l.put_block(&job.data).map(Some).map_err(|e| {
                    tracing::error!(node = %job.file.node, block = job.index, error = %e, "storing a block failed");
                    errno(&e)
                })
            }),
        });
        let result = std::panic::catch_unwind(store).unwrap_or_else(|_| {
            tracing::error!(node = %job.file.node, block = job.index, "storing a block panicked");
            Err(Errno::EIO)
        });
        let mut st = job.file.st.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        let current = matches!(st.slots.get(&job.index), Some(Slot::Hashing { seq, .. }) if *seq == job.seq);
        match result {
            Ok(block) => {
                if current {
                    st.slots.insert(job.index, Slot::Ready { block, seq: job.seq });
                }
            }
            Err(e) => {
                st.error = Some(e);
                if current {
                    let data = job.data.as_ref().clone();
                    shared.add_mem(data.capacity() as i64);
                    st.slots.insert(job.index, Slot::Buf { data, seq: job.seq });
                }
            }
        }
        drop(st);
        // The memory is accounted for before the waiters wake, so a commit
        // that returns has no block of its file still counted.
        let cap = job.data.capacity() as i64;
        let file = job.file.clone();
        drop(job);
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        shared.add_mem(-cap);
        file.cond.notify_all();
    }
}
