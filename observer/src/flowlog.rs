//! The flow log: JSON Lines, one [`FlowRecord`] per line, to a file or stdout.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::Path,
};

use observer_common::record::FlowRecord;

pub struct FlowLog {
    out: BufWriter<Box<dyn Write + Send>>,
    pub records: u64,
}

impl FlowLog {
    /// `-` is stdout; a path is appended to (created if missing).
    pub fn open(path: &Path) -> io::Result<FlowLog> {
        let sink: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(io::stdout())
        } else {
            let f: File = OpenOptions::new().create(true).append(true).open(path)?;
            Box::new(f)
        };
        Ok(FlowLog {
            out: BufWriter::with_capacity(64 * 1024, sink),
            records: 0,
        })
    }

    pub fn write(&mut self, record: &FlowRecord) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.records += 1;
        Ok(())
    }

    /// Makes written records visible to readers; called once per agent tick, not per record.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
