//! Raw syscalls, in one place. Every `unsafe` block here says why it is sound;
//! nothing outside this module calls into libc with raw pointers.
