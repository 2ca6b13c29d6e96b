# Sourced by the share-probe scripts: a mosquitto of their own on a free loopback port, data in
# $D (persistence on), pid in $MQ; pub FROM TO publishes messages mFROM..mTO at QoS 1 on t/x
# with MQTT version $V (default 3.1.1).
D=$(mktemp -d); chmod 777 $D
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
V=${V:-mqttv311}
cat > $D/m.conf <<C
listener $PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $D/
max_queued_messages 1000000
log_dest file $D/mosquitto.log
log_type all
C
/usr/sbin/mosquitto -c $D/m.conf & MQ=$!
sleep 0.5
pub() { # from to
  for i in $(seq $1 $2); do echo "m$i"; done | mosquitto_pub -V $V -p $PORT -q 1 -t t/x -l
}
