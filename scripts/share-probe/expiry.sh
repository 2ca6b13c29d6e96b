#!/usr/bin/env bash
# What mosquitto does with a shared-group member's queued share when its MQTT 5 session expires
# (docs/scale.md, "MQTT 5: session expiry"). Members A and B in group g, MQTT 5, session expiry
# X seconds (default 2), QoS 1.
#   1 both up                    the split of 100
#   2 A killed, 100 published    A's share queued in its live session
#   3 wait past the expiry       what becomes of that queued share
#   4 100 more                   where new alerts go once A's session is gone
#   5 A back (new session)       what A receives
# Needs mosquitto, mosquitto_sub, mosquitto_pub. Usage: scripts/share-probe/expiry.sh
set -u
X=${X:-2}
V=mqttv5
. "$(dirname "$0")/broker.sh"
sub() { # id group file
  mosquitto_sub -V $V -p $PORT -q 1 -c -x $X -i $1 -t "\$share/$2/t/#" >> $3 & echo $!
}
A=$(sub A g $D/a); B=$(sub B g $D/b)
sleep 0.5
pub 1 100; sleep 1
echo "1 both up: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
kill -9 $A; wait $A 2>/dev/null; sleep 0.3
pub 101 200; sleep 0.5
echo "2 A dead, session alive, 100 published: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
sleep $((X + 3))
echo "3 waited past the ${X}s session expiry"
pub 201 300; sleep 1
echo "4 100 more: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
A=$(sub A g $D/a); sleep 1.5
echo "5 A back with a new session: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
cat $D/a $D/b | sort | uniq | wc -l | sed 's/^/distinct received by the group of 300: /'
kill $A $B; kill $MQ; wait 2>/dev/null
rm -rf $D
