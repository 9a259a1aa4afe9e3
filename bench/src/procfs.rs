//! What the load generator reads from `/proc`: a process's CPU time
//! (utime + stime of all its threads), its resident memory, the generator's
//! own CPU time, and PostgreSQL's CPU time (its backends run outside the
//! server process).

use std::fs;

/// CPU seconds of one process or a group of them, split user/kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub user: f64,
    pub system: f64,
}

impl Cpu {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            system: self.system - before.system,
        }
    }
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// (comm, utime ticks, stime ticks) from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(String, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    // Fields after the comm start at field 3 (state); utime is field 14.
    let fields: Vec<&str> = text[close + 2..].split(' ').collect();
    let utime = fields.get(11)?.parse().ok()?;
    let stime = fields.get(12)?.parse().ok()?;
    Some((comm, utime, stime))
}

/// CPU time of a process, all threads (10 ms resolution).
pub fn process_cpu(pid: u32) -> Option<Cpu> {
    let (_, utime, stime) = stat_of(pid)?;
    let hz = ticks_per_sec();
    Some(Cpu {
        user: utime as f64 / hz,
        system: stime as f64 / hz,
    })
}

/// The generator's own CPU time (microsecond resolution).
pub fn self_cpu() -> Cpu {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cpu {
        user: secs(usage.ru_utime),
        system: secs(usage.ru_stime),
    }
}

/// Summed CPU time of every process named `postgres` on the machine.
pub fn postgres_cpu() -> Cpu {
    let hz = ticks_per_sec();
    let mut total = Cpu::default();
    let Ok(entries) = fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((comm, utime, stime)) = stat_of(pid) {
            if comm == "postgres" {
                total.user += utime as f64 / hz;
                total.system += stime as f64 / hz;
            }
        }
    }
    total
}

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM, RssAnon...), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Pins the calling thread (and threads it starts later) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: the set is zeroed, then one bit set; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The open-file limit of this process.
pub fn open_file_limit() -> u64 {
    // SAFETY: getrlimit writes into the zeroed struct we pass.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur
        } else {
            0
        }
    }
}
