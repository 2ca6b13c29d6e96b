#!/usr/bin/env bash
# What mosquitto does with a shared subscription (docs/scale.md, "Measured"): members A and B
# in group g, a member of group "audit"; all MQTT 3.1.1, persistent sessions, QoS 1.
#   1 both up            how the group splits 100 alerts (and the audit member gets all)
#   2 A killed (-9)      where the alerts of the next 100 go while A's session waits
#   3 A back             what A receives when it returns
#   4 A stopped, killed  what happens to alerts sent to A and never acked (SIGSTOP, then -9)
#   5 A back again       ... and whether they come back to A
#   6 100 more           whether the round robin goes on after the returns
# Needs mosquitto, mosquitto_sub, mosquitto_pub. Usage: scripts/share-probe/measure.sh
set -u
. "$(dirname "$0")/broker.sh"
sub() { # id group file
  mosquitto_sub -V $V -p $PORT -q 1 -c -i $1 -t "\$share/$2/t/#" >> $3 & echo $!
}
A=$(sub A g $D/a); B=$(sub B g $D/b)
C=$(mosquitto_sub -V $V -p $PORT -q 1 -c -i C -t "\$share/audit/t/#" >> $D/c & echo $!)
sleep 0.5
pub 1 100; sleep 1
echo "1 both up: A=$(wc -l <$D/a) B=$(wc -l <$D/b) audit=$(wc -l <$D/c)"
kill -9 $A; wait $A 2>/dev/null; sleep 0.5
pub 101 200; sleep 1
echo "2 A dead (persistent session), 100 published: A=$(wc -l <$D/a) B=$(wc -l <$D/b) audit=$(wc -l <$D/c)"
A=$(sub A g $D/a); sleep 1.5
echo "3 A back: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
kill -STOP $A; sleep 0.3
pub 201 300; sleep 1
kill -9 $A; kill -CONT $A; wait $A 2>/dev/null; sleep 0.5
echo "4 A stopped (in flight unacked) then killed: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
A=$(sub A g $D/a); sleep 1.5
echo "5 A back again: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
pub 301 400; sleep 1.5
echo "6 100 more after reconnect: A=$(wc -l <$D/a) B=$(wc -l <$D/b) audit=$(wc -l <$D/c)"
cat $D/a $D/b | sort | uniq | wc -l | sed 's/^/distinct received by the group: /'
cat $D/a $D/b | sort | uniq -d | wc -l | sed 's/^/duplicates: /'
kill $A $B $C; kill $MQ; wait 2>/dev/null
rm -rf $D
