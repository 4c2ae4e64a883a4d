"""Opens COUNT keep-alive connections to 127.0.0.1:PORT, each making one request, then holds them idle.

Usage: hold_keepalive.py PORT COUNT READY_FILE. READY_FILE is created once every connection has had its 200;
the connections are then held for 10 minutes or until the process is killed. The memory benches
(benches/proxy.sh, benches/proxy_idle_memory.sh) read a proxy's RSS while they are held.
"""
import socket
import sys
import time

port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
request = b"GET / HTTP/1.1\r\nHost: ec2-1-2-3-4.us-west-2.compute.amazonaws.com\r\n\r\n"
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    if b" 200 " not in s.recv(4096):
        sys.exit("not a 200")
    conns.append(s)
open(ready, "w").close()
time.sleep(600)
