//! The flow log: JSON Lines, one [`FlowRecord`] per line, to a file or stdout.
//!
//! A file log can be bounded (`--flow-log-max-bytes`): past the size it is renamed to
//! `PATH.1` (replacing the previous one) and a new file is started, so a node keeps at most
//! about twice the bound, and a tailer sees whole lines only in the renamed file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use observer_common::record::FlowRecord;

pub struct FlowLog {
    out: BufWriter<Box<dyn Write + Send>>,
    /// The file and its size bound, when the log is a file.
    file: Option<(PathBuf, u64)>,
    written: u64,
    pub records: u64,
    pub rotations: u64,
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

impl FlowLog {
    /// `-` is stdout; a path is appended to (created if missing). `max_bytes` 0 never rotates.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<FlowLog> {
        if path == Path::new("-") {
            let out: Box<dyn Write + Send> = Box::new(io::stdout());
            return Ok(FlowLog {
                out: BufWriter::new(out),
                file: None,
                written: 0,
                records: 0,
                rotations: 0,
            });
        }
        let (f, len) = open_append(path)?;
        let out: Box<dyn Write + Send> = Box::new(f);
        Ok(FlowLog {
            out: BufWriter::with_capacity(64 * 1024, out),
            file: (max_bytes > 0).then(|| (path.to_path_buf(), max_bytes)),
            written: len,
            records: 0,
            rotations: 0,
        })
    }

    pub fn write(&mut self, record: &FlowRecord) -> io::Result<()> {
        self.write_line(&serde_json::to_vec(record)?)
    }

    /// Writes one record already serialised (without its newline).
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if let Some((path, max)) = &self.file
            && self.written > 0
            && self.written + line.len() as u64 + 1 > *max
        {
            let path = path.clone();
            self.rotate(&path)?;
        }
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.written += line.len() as u64 + 1;
        self.records += 1;
        Ok(())
    }

    fn rotate(&mut self, path: &Path) -> io::Result<()> {
        self.out.flush()?;
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        fs::rename(path, &old)?;
        let (f, len) = open_append(path)?;
        let out: Box<dyn Write + Send> = Box::new(f);
        self.out = BufWriter::with_capacity(64 * 1024, out);
        self.written = len;
        self.rotations += 1;
        Ok(())
    }

    /// Makes written records visible to readers; called once per agent tick, not per record.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use observer_common::record::{Direction, Endpoint, Outcomes, Protocol, Timestamp};

    use super::*;

    fn record(count: u64) -> FlowRecord {
        FlowRecord {
            schema: 1,
            node: "n".into(),
            protocol: Protocol::Tcp,
            direction: Direction::Egress,
            count,
            outcomes: Outcomes {
                established: count,
                ..Default::default()
            },
            pre_existing: false,
            first_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            last_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            netns: 1,
            process: None,
            src: Endpoint::default(),
            dst: Endpoint::default(),
            verdict: None,
            reason: None,
            rule: None,
            model: None,
        }
    }

    #[test]
    fn a_bounded_log_rotates_whole_lines_and_loses_none() {
        let dir = std::env::temp_dir().join(format!("observer-flowlog-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.jsonl");
        let line_len = serde_json::to_vec(&record(1)).unwrap().len() as u64 + 1;
        let mut log = FlowLog::open(&path, line_len * 10).unwrap();
        for i in 1..=25 {
            log.write(&record(i % 9 + 1)).unwrap();
        }
        log.flush().unwrap();
        assert_eq!(log.rotations, 2);
        let read = |p: &Path| -> Vec<FlowRecord> {
            fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let (current, previous) = (read(&path), read(&dir.join("flows.jsonl.1")));
        assert_eq!(
            (previous.len(), current.len()),
            (10, 5),
            "the oldest 10 were rotated away twice over"
        );
        assert_eq!(
            current.iter().map(|r| r.count).collect::<Vec<_>>(),
            (21..=25).map(|i| i % 9 + 1).collect::<Vec<_>>()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
