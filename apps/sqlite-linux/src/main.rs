//! The Linux baseline of `flexos bench sqlite`: the driver program's C
//! `main` (apps/sqlite/c/sqlite_main.c) is the program's entry point.
#![no_main]
