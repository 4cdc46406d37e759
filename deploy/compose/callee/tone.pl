#!/usr/bin/perl
# Writes a raw G.711 mu-law tone (8 kHz, mono, no header) for sipp's rtp_stream action.
#   tone.pl FILE [HZ] [SECONDS]
# One second of 440 Hz holds a whole number of cycles, so sipp's endless loop of the file
# plays a clean tone without a click at the seam. Perl is used because perl-base is part of
# every Debian image, so the callee image needs no extra package to build its audio.
use strict;
use warnings;

my ($file, $hz, $seconds) = @ARGV;
die "usage: $0 FILE [HZ] [SECONDS]\n" unless defined $file;
$hz //= 440;
$seconds //= 1;
my $rate = 8000;
# About -12 dBFS: clearly audible, far from clipping after the gateway's transcoding.
my $amplitude = 8000;
my $pi = 4 * atan2(1, 1);

# ITU-T G.711 mu-law, the usual segment search on the biased magnitude.
sub linear_to_ulaw {
    my ($pcm) = @_;
    my $sign = $pcm < 0 ? 0x80 : 0x00;
    my $mag = $pcm < 0 ? -$pcm : $pcm;
    $mag = 32635 if $mag > 32635;
    $mag += 0x84;
    my $exponent = 7;
    for (my $mask = 0x4000; ($mag & $mask) == 0 && $exponent > 0; $mask >>= 1) {
        $exponent--;
    }
    my $mantissa = ($mag >> ($exponent + 3)) & 0x0F;
    return ~($sign | ($exponent << 4) | $mantissa) & 0xFF;
}

open(my $out, '>:raw', $file) or die "$file: $!\n";
my $samples = $rate * $seconds;
my $bytes = '';
for my $i (0 .. $samples - 1) {
    my $pcm = int($amplitude * sin(2 * $pi * $hz * $i / $rate));
    $bytes .= chr(linear_to_ulaw($pcm));
}
print {$out} $bytes or die "$file: $!\n";
close($out) or die "$file: $!\n";
