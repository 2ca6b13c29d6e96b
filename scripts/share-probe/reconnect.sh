#!/usr/bin/env bash
# A durable shared member that reconnects WITHOUT subscribing again (session present):
# does it still get its share? (mosquitto < 2.0.12 changelog: "$share subscriptions not
# being recovered for durable clients that reconnect"). alertbridge does exactly this on a
# reconnect of a running process whose SUBACKs it has seen (invariant S1).
# Usage: scripts/share-probe/reconnect.sh
set -u
. "$(dirname "$0")/broker.sh"
python3 $(dirname "$0")/rawsub.py $PORT A '$share/g/t/#' 1 5 >> $D/a &
python3 $(dirname "$0")/rawsub.py $PORT B '$share/g/t/#' 1 16 >> $D/b &
sleep 2; pub 1 100; sleep 3.5
echo "1 both subscribed: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
python3 $(dirname "$0")/rawsub.py $PORT A '$share/g/t/#' 0 5 >> $D/a &
sleep 0.5; pub 101 200; sleep 1
echo "2 A reconnected without SUBSCRIBE, 100 more: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
sleep 4
python3 $(dirname "$0")/rawsub.py $PORT A '$share/g/t/#' 1 3 >> $D/a &
sleep 0.5; pub 201 300; sleep 2.5
echo "3 A reconnected with SUBSCRIBE, 100 more: A=$(wc -l <$D/a) B=$(wc -l <$D/b)"
cat $D/a $D/b | sort -u | wc -l | sed 's/^/distinct: /'
cat $D/a $D/b | sort | uniq -d | wc -l | sed 's/^/duplicates: /'
kill $MQ; wait 2>/dev/null; rm -rf $D
