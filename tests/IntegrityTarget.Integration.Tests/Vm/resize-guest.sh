# Guest side of VmResizeTests (run by vm-initiator's VM_EXTRA hook, busybox sh, DEV/DEVN/IQN/PORTAL set).
# Makes a filesystem, writes a checksummed file, prints VMX-RESIZE: READY for the host to grow the LUN while
# this keeps writing, waits until `iscsiadm --rescan` shows the new size, grows the filesystem with resize2fs,
# fills space beyond the old end, and verifies every checksum after dropping the caches and after fsck.
set -e
# Busybox sh runs its own applets first, so the e2fsprogs tools are named by path. Markers go straight to
# the report's serial port as well: this script's stdout reaches the report through a buffered pipe.
mark() { echo "$*"; [ -c /dev/ttyS1 ] && echo "$*" > /dev/ttyS1 || true; }
MNT=/mnt/grow
mkdir -p $MNT
/usr/sbin/mkfs.ext4 -q -F "$DEV"
mount -t ext4 "$DEV" $MNT
dd if=/dev/urandom of=$MNT/before.bin bs=1M count=24 2>/dev/null
sha256sum $MNT/before.bin > /tmp/sums
sync
OLD=$(cat /sys/block/$DEVN/size)
OLDFS=$(df -k $MNT | awk 'NR==2 {print $2}')
mark "VMX-RESIZE: READY $OLD sectors"
NEW=$OLD
i=0
while [ $i -lt 150 ]; do
    # I/O keeps going while the host grows the LUN.
    dd if=/dev/urandom of=$MNT/during.$((i % 4)).bin bs=256k count=4 conv=fsync 2>/dev/null
    iscsiadm -m node -T "$IQN" -p "$PORTAL" --rescan >/dev/null 2>&1 || true
    NEW=$(cat /sys/block/$DEVN/size)
    [ "$NEW" -gt "$OLD" ] && break
    i=$((i + 1))
    sleep 1
done
[ "$NEW" -gt "$OLD" ] || { echo "VMX-RESIZE: FAIL the size stayed $OLD sectors"; exit 1; }
echo "VMX-RESIZE: GREW $OLD -> $NEW sectors"
dmesg | grep -i -E "capacity|$DEVN" | tail -5
for f in $MNT/during.*.bin; do sha256sum "$f" >> /tmp/sums; done
/usr/sbin/resize2fs "$DEV"
NEWFS=$(df -k $MNT | awk 'NR==2 {print $2}')
echo "VMX-RESIZE: FS $OLDFS -> $NEWFS KiB"
[ "$NEWFS" -gt $((OLDFS + OLDFS / 2)) ] || { echo "VMX-RESIZE: FAIL the filesystem did not grow"; exit 1; }
# More data than the old filesystem could hold at all.
dd if=/dev/urandom of=$MNT/after.bin bs=1M count=$((OLDFS / 1024 + 16)) 2>/dev/null
sha256sum $MNT/after.bin >> /tmp/sums
sync
echo 3 > /proc/sys/vm/drop_caches
sha256sum -c /tmp/sums
umount $MNT
/usr/sbin/e2fsck -f -n "$DEV"
mount -t ext4 "$DEV" $MNT
sha256sum -c /tmp/sums
umount $MNT
echo "VMX-RESIZE: DONE"
