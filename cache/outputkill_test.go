package cache

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// killWriterEnv tells the test binary to run as the writer process of
// TestOutputWriterSurvivesKill, writing into the directory it names.
const killWriterEnv = "SDSAGENT_TEST_OUTPUT_WRITER_DIR"

// TestOutputWriterProcess is the writer process of
// TestOutputWriterSurvivesKill, not a test: it writes a new identity
// (fresh leaf, alternating between two roots) into the directory as fast
// as it can and prints "written" after each write, until it is killed.
func TestOutputWriterProcess(t *testing.T) {
	dir := os.Getenv(killWriterEnv)
	if dir == "" {
		t.Skip("runs only as the writer process of TestOutputWriterSurvivesKill")
	}
	roots := []*testpki.CA{testpki.NewRoot(t, "kill root a"), testpki.NewRoot(t, "kill root b")}
	store := NewStore(clock.Real())
	w, err := NewOutputWriter(OutputConfig{Dir: dir, Source: store})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100_000 { // bounded, should the parent never kill it
		root := roots[i%2]
		store.Update(identitySecrets(root, root.IssueLeaf(t, testpki.LeafOptions{})), nil)
		if err := w.write(); err != nil {
			t.Fatal(err)
		}
		fmt.Println("written")
	}
}

// TestOutputWriterSurvivesKill runs a real writer process that rewrites
// the directory continuously, kills it with SIGKILL at random points, and
// starts it again, while a reader keeps loading the files. The reader never
// loads a chain with a key or root of another version, and after each kill
// the directory holds one complete version.
func TestOutputWriterSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a writer process")
	}
	dir := t.TempDir()
	var (
		stop     atomic.Bool
		reads    atomic.Int64
		straddle atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		readErr  error
	)
	startReader := func() {
		wg.Go(func() {
			for !stop.Load() {
				err := readOnce(dir)
				switch {
				case errors.Is(err, errStraddled):
					straddle.Add(1)
				case err != nil:
					mu.Lock()
					readErr = errors.Join(readErr, err)
					mu.Unlock()
					return
				default:
					reads.Add(1)
				}
			}
		})
	}
	const kills = 8
	for round := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^TestOutputWriterProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), killWriterEnv+"="+dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill it after a random number of writes, while it is in the
		// middle of the next one.
		want := 1 + rand.IntN(15)
		sc := bufio.NewScanner(out)
		n := 0
		for n < want && sc.Scan() {
			if sc.Text() == "written" {
				n++
			}
		}
		if round == 0 {
			startReader()
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if n < want {
			t.Fatalf("the writer process stopped after %d writes:\n%s", n, stderr.String())
		}
		if err := checkPair(dir); err != nil {
			t.Fatalf("after a kill during write %d: %v", want+1, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d kills; reader: %d consistent reads, %d reads that straddled a swap and were repeated", kills, reads.Load(), straddle.Load())
	if readErr != nil {
		t.Fatalf("a reader saw a torn set: %v", readErr)
	}
	if reads.Load() == 0 {
		t.Fatal("the reader never read a complete set")
	}
	// One more write tidies up whatever the last kill left.
	if err := newTestWriter(t, dir, storeOf(t, newOutputVersion(t, "last")), nil).write(); err != nil {
		t.Fatal(err)
	}
	checkLayout(t, dir)
}

// errStraddled says the files changed while they were read.
var errStraddled = errors.New("the files changed while they were read")

// readOnce reads the chain, the key, the root and the chain again, as a
// reader that loads the files one by one does. If the two chain reads
// differ a write happened in between (every write has a new leaf), and
// it returns errStraddled, as it does when a file vanishes mid-read;
// otherwise the key must be the chain's and the root its issuer.
func readOnce(dir string) error {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
	chain, err1 := read(OutputCertChainFile)
	key, err2 := read(OutputKeyFile)
	root, err3 := read(OutputRootCertFile)
	again, err4 := read(OutputCertChainFile)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errStraddled
		}
		return err
	}
	if !bytes.Equal(chain, again) {
		return errStraddled
	}
	return checkSet(chain, key, root)
}

// checkPair loads the files of dir once, with nothing writing.
func checkPair(dir string) error {
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, OutputCertChainFile), filepath.Join(dir, OutputKeyFile)); err != nil {
		return fmt.Errorf("tls.LoadX509KeyPair: %w", err)
	}
	chain, err1 := os.ReadFile(filepath.Join(dir, OutputCertChainFile))
	key, err2 := os.ReadFile(filepath.Join(dir, OutputKeyFile))
	root, err3 := os.ReadFile(filepath.Join(dir, OutputRootCertFile))
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	return checkSet(chain, key, root)
}

// checkSet checks that key belongs to chain's leaf and root issued it.
func checkSet(chain, key, root []byte) error {
	pair, err := tls.X509KeyPair(chain, key)
	if err != nil {
		return fmt.Errorf("key and chain: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	block, _ := pem.Decode(root)
	if block == nil {
		return errors.New("root file holds no PEM block")
	}
	rootCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err
	}
	if err := leaf.CheckSignatureFrom(rootCert); err != nil {
		return fmt.Errorf("root and chain: %w", err)
	}
	return nil
}
