//! Waiting on a 32-bit word in shared memory (Linux futexes, not private:
//! they work across the processes that map the same memory). In a VM the
//! host thread of the vCPU waits or wakes on the guest's behalf.

use core::sync::atomic::AtomicU32;

/// Sleeps while `*word == expected`, at most `timeout_ns`; returns early on
/// a wake-up, a signal, or when the word no longer holds `expected`.
pub fn wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    if crate::guest::in_guest() {
        let port = crate::guest::port::FUTEX_WAIT;
        return crate::guest::hypercall(port, word.as_ptr() as u64, expected as u64, timeout_ns);
    }
    let ts =
        libc::timespec { tv_sec: (timeout_ns / 1_000_000_000) as i64, tv_nsec: (timeout_ns % 1_000_000_000) as i64 };
    // SAFETY: FUTEX_WAIT reads the word (valid for the borrow) and sleeps;
    // the timespec lives across the call.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes every thread, in any process, sleeping in [`wait`] on `word`.
pub fn wake_all(word: &AtomicU32) {
    if crate::guest::in_guest() {
        return crate::guest::hypercall(crate::guest::port::FUTEX_WAKE, word.as_ptr() as u64, 0, 0);
    }
    // SAFETY: FUTEX_WAKE only uses the word's address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_sleeper_is_woken() {
        let word = Arc::new(AtomicU32::new(0));
        let w = word.clone();
        let t = std::thread::spawn(move || {
            while w.load(Ordering::Acquire) == 0 {
                wait(&w, 0, 5_000_000_000);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        word.store(1, Ordering::Release);
        wake_all(&word);
        t.join().unwrap();
        wait(&word, 0, 1_000_000_000); // returns at once: the word changed
    }
}
