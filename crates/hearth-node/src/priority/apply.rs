//! Setting a class on a host process from the host (where CAP_SYS_NICE counts).

use std::io;

use super::rules::Class;

/// Sets `class` on every thread of process `pid`: nice and policy are per thread, and a
/// thread started before this call keeps what it had. Threads started after it inherit
/// from the one that starts them.
pub fn set_class(pid: i32, class: Class) -> io::Result<()> {
    set_thread(pid, class)?;
    let dir = format!("/proc/{pid}/task");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let tid = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok());
        if let Some(tid) = tid.filter(|t| *t != pid) {
            // A thread that exited since the listing is no failure.
            match set_thread(tid, class) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                r => r?,
            }
        }
    }
    Ok(())
}

fn set_thread(tid: i32, class: Class) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscalls on a tid with a valid sched_param.
    unsafe {
        if libc::sched_setscheduler(tid, class.policy.as_raw(), &param) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, class.nice) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
