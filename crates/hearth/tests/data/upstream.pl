# Test upstream for the port proxy, run inside a workspace (Debian's perl, core modules
# only): perl upstream.pl PORT [ADDR]. Forks per connection, keeps connections alive.
#   GET  /headers    -> the request's header lines, as received
#   GET  /file/PATH  -> the file at /PATH, streamed with a Content-Length
#   POST /upload     -> sha256 hex of the request body (Content-Length bodies)
#   GET  /ws         -> WebSocket echo (text and binary; close is answered)
use strict;
use warnings;
use IO::Socket::INET;
use Digest::SHA qw(sha1);
use MIME::Base64 qw(encode_base64);

$SIG{CHLD} = 'IGNORE';
my ($port, $addr) = @ARGV;
my $srv = IO::Socket::INET->new(
    LocalAddr => $addr // '127.0.0.1', LocalPort => $port,
    Listen => 128, ReuseAddr => 1, Proto => 'tcp',
) or die "listen: $!";
open(my $ready, '>', "/tmp/ready-$port") or die; close $ready;

sub reply {
    my ($c, $status, $body, $type) = @_;
    $type //= 'text/plain';
    print $c "HTTP/1.1 $status\r\nContent-Type: $type\r\nContent-Length: "
        . length($body) . "\r\n\r\n" . $body;
}

sub read_exact {
    my ($c, $n) = @_;
    my $buf = '';
    while (length($buf) < $n) {
        my $got = read($c, $buf, $n - length($buf), length($buf));
        return undef unless $got;
    }
    return $buf;
}

sub ws_send {
    my ($c, $op, $data) = @_;
    my $len = length $data;
    my $head = chr(0x80 | $op);
    if ($len < 126) { $head .= chr($len) }
    elsif ($len < 65536) { $head .= chr(126) . pack('n', $len) }
    else { $head .= chr(127) . pack('Q>', $len) }
    print $c $head . $data;
}

sub websocket {
    my ($c, $h) = @_;
    my $accept = encode_base64(
        sha1($h->{'sec-websocket-key'} . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'), '');
    print $c "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Accept: $accept\r\n\r\n";
    while (defined(my $b = read_exact($c, 2))) {
        my ($b0, $b1) = unpack('CC', $b);
        my $op = $b0 & 0x0f;
        my $len = $b1 & 0x7f;
        $len = unpack('n', read_exact($c, 2)) if $len == 126;
        $len = unpack('Q>', read_exact($c, 8)) if $len == 127;
        my $mask = ($b1 & 0x80) ? read_exact($c, 4) : "\0\0\0\0";
        my $data = $len ? read_exact($c, $len) : '';
        return unless defined $data;
        my $m = substr($mask x (int($len / 4) + 1), 0, $len);
        $data = $data ^ $m;
        if ($op == 8) { ws_send($c, 8, $data); return }
        if ($op == 9) { ws_send($c, 10, $data); next }
        ws_send($c, $op, $data) if $op == 1 || $op == 2;
    }
}

while (1) {
    my $c = $srv->accept or next;
    my $pid = fork;
    if (!defined $pid || $pid) { close $c; next }
    binmode $c;
    $c->autoflush(1);
    while (defined(my $line = <$c>)) {
        my ($method, $path) = split ' ', $line;
        my (%h, $raw);
        $raw = '';
        while (defined(my $l = <$c>)) {
            last if $l =~ /^\r?\n$/;
            $raw .= $l;
            $h{lc $1} = $2 if $l =~ /^([^:]+):\s*(.*?)\r?\n$/;
        }
        if ($path eq '/ws') { websocket($c, \%h); last }
        elsif ($path eq '/headers') { reply($c, '200 OK', $raw) }
        elsif ($path =~ m{^/file(/.+)$}) {
            my $f = $1;
            if (open(my $fh, '<', $f)) {
                binmode $fh;
                my $size = -s $fh;
                print $c "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    . "Content-Length: $size\r\n\r\n";
                my $buf;
                while (my $n = read($fh, $buf, 65536)) { print $c $buf }
                close $fh;
            } else { reply($c, '404 Not Found', "no $f\n") }
        }
        elsif ($method eq 'POST' && $path eq '/upload') {
            my $left = $h{'content-length'} // 0;
            my $sha = Digest::SHA->new(256);
            my $buf;
            while ($left > 0) {
                my $n = read($c, $buf, $left > 65536 ? 65536 : $left) or last;
                $sha->add($buf);
                $left -= $n;
            }
            reply($c, '200 OK', $sha->hexdigest . "\n");
        }
        else { reply($c, '404 Not Found', "no route $path\n") }
    }
    exit 0;
}
