#!/bin/sh
# The demo callee: sipp as a UAS that answers every call with a 440 Hz PCMU tone
# (uas_tone.xml). kamailio relays INVITEs for user "tone" here.
#
# sipp puts its address into Via, Contact and the SDP's c= line, so it must be this
# container's address on the compose network, not 0.0.0.0: it is looked up unless
# CALLEE_IP is given.
#   CALLEE_IP       address to announce (default: the container's own address)
#   CALLEE_SIP_PORT SIP port, UDP (default 5060)
#   CALLEE_RTP_PORT RTP port; sipp also binds the next ones (default 6000)
#   CALLEE_LOG_DIR  where sipp writes its traces (default /tmp/callee)
set -eu
ip=${CALLEE_IP:-$(hostname -i | cut -d' ' -f1)}
sip_port=${CALLEE_SIP_PORT:-5060}
rtp_port=${CALLEE_RTP_PORT:-6000}
log_dir=${CALLEE_LOG_DIR:-/tmp/callee}
mkdir -p "$log_dir"
echo "callee: sipp UAS on ${ip}:${sip_port}/udp, RTP from ${ip}:${rtp_port};" \
  "SIP traces in ${log_dir} (docker compose exec callee tail -f ${log_dir}/messages.log)"
# With no terminal sipp prints its statistics only when it stops (into the container's log).
# Its SIP traces go to files, rotated at 1 MB: sipp reopens a trace file by name, and an
# unprivileged process may not reopen the container's stdout or stderr pipe.
exec sipp -sf /etc/sipstream-demo/uas_tone.xml \
  -i "$ip" -p "$sip_port" -mi "$ip" -mp "$rtp_port" -t u1 -nostdin \
  -trace_msg -message_file "$log_dir/messages.log" \
  -trace_err -error_file "$log_dir/errors.log" \
  -ringbuffer_files 2 -ringbuffer_size 1000000
