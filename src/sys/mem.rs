//! Memory given back to the kernel: the pages of an idle TCP flow's empty
//! rings (see [`tapnet_nat::leg::Leg::idle_rings`]).

use std::sync::OnceLock;
use tapnet_nat::leg::IdleRing;

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant; no memory of ours.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Gives the whole pages of an idle leg's empty ring back to the kernel
/// ([`discard_pages`]): the ring costs no memory until data flows again.
pub fn give_back(ring: IdleRing<'_>) {
    let ptr = std::ptr::with_exposed_provenance_mut::<u8>(ring.addr());
    // SAFETY: an `IdleRing` names `len` bytes of one live allocation (a
    // ring's `Vec<u8>`, whose address the leg exposed), lent for this call
    // only, which nothing else reads or writes meanwhile; any bytes are
    // valid `u8`s.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, ring.len()) };
    discard_pages(buf);
}

/// `madvise(MADV_DONTNEED)` on the whole pages inside `buf` (a partial
/// page at either end is left alone): they read as zeros afterwards and
/// are resident again only once written. For heap memory (private and
/// anonymous: glibc's heap and its `mmap`ed blocks), never for a file
/// mapping. Returns the bytes given back (0 if the call failed).
pub fn discard_pages(buf: &mut [u8]) -> usize {
    let page = page_size();
    let start = buf.as_mut_ptr() as usize;
    // The first and the end of the whole pages inside (end may come
    // before first when `buf` lies within one page).
    let first = start.next_multiple_of(page);
    let end = (start + buf.len()) / page * page;
    if end <= first {
        return 0;
    }
    let (offset, len) = (first - start, end - first);
    // SAFETY: [offset, offset + len) lies inside `buf`, which we borrow
    // exclusively, and is page-aligned. On private anonymous memory
    // MADV_DONTNEED drops the pages and the next access maps zeros: the
    // same as writing zeros through `buf`, a valid value for `u8`. It
    // never unmaps anything.
    let r = unsafe {
        libc::madvise(
            buf.as_mut_ptr().add(offset).cast(),
            len,
            libc::MADV_DONTNEED,
        )
    };
    if r == 0 {
        len
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of the pages from `addr` (page-aligned) on are resident.
    fn resident(addr: usize, pages: usize) -> Vec<bool> {
        let mut v = vec![0u8; pages];
        // SAFETY: mincore reads the page tables of [addr, addr + pages
        // pages), mapped memory of ours, and writes `pages` bytes to `v`.
        let r = unsafe {
            libc::mincore(
                addr as *mut libc::c_void,
                pages * page_size(),
                v.as_mut_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        v.iter().map(|b| b & 1 == 1).collect()
    }

    #[test]
    fn whole_pages_inside_go_back_and_read_as_zeros() {
        let page = page_size();
        let mut v = vec![1u8; 10 * page + 100];
        let base = v.as_ptr() as usize;
        let skip = 7;
        let given = discard_pages(&mut v[skip..]);
        let first = (base + skip).next_multiple_of(page) - base;
        let end = (base + v.len()) / page * page - base;
        assert_eq!(given, end - first);
        assert!(given >= 8 * page, "{given}");
        assert!(
            v[..first].iter().all(|&b| b == 1),
            "the partial page before"
        );
        assert!(
            v[first..end].iter().all(|&b| b == 0),
            "whole pages read as zeros"
        );
        assert!(v[end..].iter().all(|&b| b == 1), "the partial page after");
        // Residency, on a second buffer: reading a page given back maps
        // the shared zero page, which mincore may count as resident.
        let mut w = vec![1u8; 8 * page];
        let wb = w.as_ptr() as usize;
        discard_pages(&mut w);
        let a = wb.next_multiple_of(page);
        let n = (wb + w.len() - a) / page;
        assert!(
            resident(a, n).iter().all(|&r| !r),
            "given back: not resident"
        );
        w[a - wb] = 5;
        assert!(resident(a, 1)[0], "written again: resident");
        assert_eq!(w[a - wb], 5);
    }

    #[test]
    fn a_span_smaller_than_a_page_is_left_alone() {
        let page = page_size();
        let mut v = vec![3u8; 3 * page];
        let a = (v.as_ptr() as usize).next_multiple_of(page) - v.as_ptr() as usize;
        // Within one page: at its start, in its middle, up to its end, and
        // across a page boundary without a whole page.
        for (from, to) in [
            (a, a + 100),
            (a + 10, a + 90),
            (a + 100, a + page),
            (a + 10, a + page + 10),
        ] {
            assert_eq!(discard_pages(&mut v[from..to]), 0, "{from}..{to}");
        }
        assert!(v.iter().all(|&b| b == 3));
        assert_eq!(discard_pages(&mut []), 0);
        assert_eq!(discard_pages(&mut v[a..a + page]), page, "exactly one page");
    }
}
