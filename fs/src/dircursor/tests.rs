//! The cursor against a model directory (a set of names) changed between
//! replies, with replies and kernel buffers of random sizes.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

type Dir = BTreeSet<Vec<u8>>;

/// One reply of at most `cap` entries from `offset`: (cookie, name) each,
/// `.` and `..` included.
fn reply(cookies: &mut Cookies, dir: &Dir, offset: u64, cap: usize) -> Result<Vec<(u64, Vec<u8>)>, Errno> {
    let mut out = Vec::new();
    fill(
        cookies,
        offset,
        || Ok([b".".to_vec(), b"..".to_vec()]),
        |after, limit| {
            let from = after.map_or(std::ops::Bound::Unbounded, |a| std::ops::Bound::Excluded(a.to_vec()));
            Ok(dir.range((from, std::ops::Bound::Unbounded)).take(limit).cloned().collect())
        },
        |e| e.as_slice(),
        |cookie, e| {
            if out.len() == cap {
                return Add::Full;
            }
            out.push((cookie, e.clone()));
            Add::Added
        },
    )?;
    Ok(out)
}

/// What happens between two replies.
#[derive(Clone, Debug)]
enum Step {
    /// A reply of up to `cap` entries of which the reader takes `take`
    /// (the rest did not fit in its buffer: the kernel asks for them again).
    Read {
        cap: usize,
        take: usize,
    },
    Insert(Vec<u8>),
    Remove(Vec<u8>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet, so inserts and removes hit names listed or not yet.
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(b'd')], 1..4)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1..8usize, 0..9usize).prop_map(|(cap, take)| Step::Read { cap, take }),
        2 => name().prop_map(Step::Insert),
        2 => name().prop_map(Step::Remove),
    ]
}

/// One pass from offset 0 to the end with `steps` interleaved (then reads
/// until the end): what the reader got, in order.
fn pass(start: &Dir, steps: &[Step], budget: usize) -> (Vec<Vec<u8>>, BTreeSet<Vec<u8>>) {
    let mut dir = start.clone();
    let mut cookies = Cookies::new(budget);
    let mut offset = 0;
    let mut got = Vec::new();
    let mut touched = BTreeSet::new();
    let mut read = |dir: &Dir, cap: usize, take: usize, offset: &mut u64, got: &mut Vec<Vec<u8>>| -> bool {
        let r = reply(&mut cookies, dir, *offset, cap).expect("the cookie of the last reply resumes");
        if r.is_empty() {
            return true;
        }
        for (cookie, name) in r.into_iter().take(take) {
            *offset = cookie;
            got.push(name);
        }
        false
    };
    for s in steps {
        match s {
            Step::Read { cap, take } => {
                if read(&dir, *cap, *take, &mut offset, &mut got) {
                    return (got, touched);
                }
            }
            Step::Insert(n) => {
                dir.insert(n.clone());
                touched.insert(n.clone());
            }
            Step::Remove(n) => {
                dir.remove(n);
                touched.insert(n.clone());
            }
        }
    }
    while !read(&dir, 5, 3, &mut offset, &mut got) {}
    (got, touched)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every name present throughout a pass is listed exactly once, none
    /// twice, only names that were there at some point, in name order
    /// after `.` and `..` -- whatever the budget (0: only the last two
    /// replies are remembered).
    #[test]
    fn a_pass_lists_each_stable_name_exactly_once(
        start in proptest::collection::btree_set(name(), 0..30),
        steps in proptest::collection::vec(step(), 0..60),
        budget in prop_oneof![Just(0usize), Just(600), Just(COOKIE_BYTES)],
    ) {
        let (got, touched) = pass(&start, &steps, budget);
        prop_assert!(got.len() >= 2);
        prop_assert_eq!(&got[0], b".");
        prop_assert_eq!(&got[1], b"..");
        let names = &got[2..];
        prop_assert!(names.windows(2).all(|w| w[0] < w[1]), "in name order, none twice: {:?}", names);
        let listed: BTreeSet<&Vec<u8>> = names.iter().collect();
        for n in start.difference(&touched) {
            prop_assert!(listed.contains(n), "{:?} was there throughout and was not listed", n);
        }
        for n in names {
            prop_assert!(start.contains(n) || touched.contains(n), "{:?} was never there", n);
        }
    }

    /// After a pass, each remembered cookie resumes right after its name,
    /// and listing again hands out the same cookies.
    #[test]
    fn cookies_stay_put(start in proptest::collection::btree_set(name(), 0..30), cap in 1..8usize) {
        let mut cookies = Cookies::new(COOKIE_BYTES);
        let mut seen: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut offset = 0;
        loop {
            let r = reply(&mut cookies, &start, offset, cap).expect("reply");
            let Some(&(last, _)) = r.last() else { break };
            for (c, n) in r {
                prop_assert!(seen.insert(n, c).is_none());
            }
            offset = last;
        }
        for (n, &c) in &seen {
            let r = reply(&mut cookies, &start, c, usize::MAX).expect("a remembered cookie");
            let expected: Vec<&Vec<u8>> = seen.keys().filter(|m| dots_first(m) > dots_first(n)).collect();
            let names: Vec<&Vec<u8>> = r.iter().map(|(_, m)| m).collect();
            prop_assert_eq!(names, expected);
            for (c2, m) in &r {
                prop_assert_eq!(seen.get(m), Some(c2), "{:?} keeps its cookie", m);
            }
        }
    }
}

/// Sorts `.` and `..` before every name.
fn dots_first(n: &[u8]) -> (u8, &[u8]) {
    match n {
        b"." => (0, n),
        b".." => (1, n),
        _ => (2, n),
    }
}

#[test]
fn a_cookie_never_handed_out_or_forgotten_is_refused() {
    let dir: Dir = (0..10_000u32).map(|i| format!("name{i:06}").into_bytes()).collect();
    let mut cookies = Cookies::new(4096);
    assert!(matches!(cookies.resume(12_345), Err(Errno::EINVAL)));
    let mut offset = 0;
    let mut first = None;
    let mut max_bytes = 0;
    loop {
        let r = reply(&mut cookies, &dir, offset, 100).expect("reply");
        let Some(&(last, _)) = r.last() else { break };
        first = first.or(r.get(2).map(|(c, _)| *c));
        offset = last;
        max_bytes = max_bytes.max(cookies.bytes());
    }
    // Two replies of 100 names over a budget smaller than them.
    assert!(max_bytes <= 4096 + 200 * (10 + ENTRY_OVERHEAD), "{max_bytes} bytes remembered");
    let first = first.expect("a name was listed");
    assert!(matches!(cookies.resume(first), Err(Errno::EINVAL)), "the first name's cookie was forgotten");
    assert!(matches!(cookies.resume(offset), Ok(Resume::After(Some(_)))));
    assert!(matches!(cookies.resume(0), Ok(Resume::Start)));
    assert!(matches!(cookies.resume(AFTER_DOTDOT), Ok(Resume::After(None))));
}

#[test]
fn an_error_after_some_entries_ends_the_reply_with_them() {
    let mut cookies = Cookies::new(COOKIE_BYTES);
    let mut added = Vec::new();
    let r = fill(
        &mut cookies,
        0,
        || Ok([b".".to_vec(), b"..".to_vec()]),
        |_, _| Err(Errno::EIO),
        |e: &Vec<u8>| e.as_slice(),
        |c, e| {
            added.push((c, e.clone()));
            Add::Added
        },
    );
    assert!(r.is_ok());
    assert_eq!(added.len(), 2);
    // From after `..`: nothing added before the error, which is returned.
    let r = fill(
        &mut cookies,
        AFTER_DOTDOT,
        || Ok([b".".to_vec(), b"..".to_vec()]),
        |_, _| Err(Errno::EIO),
        |e: &Vec<u8>| e.as_slice(),
        |_, _| Add::Added,
    );
    assert!(matches!(r, Err(Errno::EIO)));
}
