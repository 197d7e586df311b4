//! Legacy PC devices: the 16550 console and the i8042 reset line.

pub mod console_log;
pub mod i8042;
pub mod serial;

pub use console_log::{ConsoleLog, ConsoleWriter};
pub use i8042::I8042;
pub use serial::{IrqTrigger, SerialConsole, SerialSnapshot};
