//! RTP/RTCP: packet validation, receiver statistics, port pool and the per-leg media driver.
