//! Open-file limit. Under systemd and many container runtimes the soft limit is 1,024,
//! below what [`super::MAX_CONNECTIONS`] connections per endpoint need; running out of
//! descriptors would stall `accept` for everyone. The hard limit is ours to take.

use std::sync::Once;

/// Raises the soft open-file limit to the hard limit, once per process; logs if that
/// fails or still leaves less than the endpoints may use.
pub fn raise() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass, which lives on our stack.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit only reads the struct we pass.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim = raised;
            }
        }
        let wanted = 4 * super::MAX_CONNECTIONS as u64;
        if lim.rlim_cur < wanted {
            tracing::warn!(
                "open-file limit is {} (want {wanted} for the HTTP endpoints under load); \
                 raise it (systemd: LimitNOFILE=)",
                lim.rlim_cur
            );
        }
    });
}
