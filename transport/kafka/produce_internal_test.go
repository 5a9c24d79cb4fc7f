package kafkatransport

import (
	"math"
	"testing"

	"github.com/IBM/sarama"
)

func TestNextSeqWraps(t *testing.T) {
	for _, c := range []struct {
		seq  int32
		n    int
		want int32
	}{
		{0, 5, 5},
		{math.MaxInt32 - 2, 2, math.MaxInt32},
		{math.MaxInt32 - 2, 3, 0},
		{math.MaxInt32, 10, 9},
	} {
		if got := nextSeq(c.seq, c.n); got != c.want {
			t.Errorf("nextSeq(%d, %d) = %d, want %d", c.seq, c.n, got, c.want)
		}
	}
}

// The partition of a key is the one sarama's hash partitioner picks, so
// records keep their partition across versions of this adapter.
func TestPartitionMatchesSarama(t *testing.T) {
	for _, n := range []int32{1, 3, 7, 64} {
		for i := range 500 {
			key := []byte{byte(i), byte(i >> 3), 'k', byte(i * 7)}
			want := saramaPartition(t, key, n)
			if got := partition(key, n); got != want {
				t.Fatalf("partition(%q, %d) = %d, sarama says %d", key, n, got, want)
			}
		}
	}
}

func saramaPartition(t *testing.T, key []byte, n int32) int32 {
	t.Helper()
	p, err := sarama.NewHashPartitioner("t").Partition(&sarama.ProducerMessage{Key: sarama.ByteEncoder(key)}, n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
