# A client of the sbx agent written as a foreign program would write it:
# plain sockets and json, nothing from sbx. Usage:
#   python3 agent_client.py SOCKET REQUEST_JSON...
# Sends each request as one line and prints each reply line as received.
# Prints {"connect_error": "EACCES"} when the connect fails and
# {"closed": true} when the agent closes the connection.
import errno
import json
import socket
import sys


def main():
    path, requests = sys.argv[1], sys.argv[2:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        print(json.dumps({"connect_error": errno.errorcode.get(e.errno, str(e.errno))}))
        return
    f = s.makefile("rwb")
    for req in requests:
        try:
            f.write(req.encode() + b"\n")
            f.flush()
        except BrokenPipeError:
            pass
        line = f.readline()
        if not line:
            print(json.dumps({"closed": True}))
            return
        reply = json.loads(line)
        assert reply["v"] == 1, reply
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


main()
