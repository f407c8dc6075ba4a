package main

import (
	"context"
	"errors"
	"testing"
	"time"
)

// runAllBounded is runAll, failing the test instead of hanging if it
// does not return.
func runAllBounded(t *testing.T, ctx context.Context, tasks ...func(context.Context) error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- runAll(ctx, tasks...) }()
	select {
	case err := <-done:
		return err
	case <-time.After(waitLimit):
		t.Fatal("runAll did not return: a failure did not cancel the other tasks")
		return nil
	}
}

func TestRunAll(t *testing.T) {
	errFirst, errLater := errors.New("first failure"), errors.New("later failure")

	t.Run("the first error cancels the rest and is the result", func(t *testing.T) {
		failed := make(chan struct{})
		// waiter ends when its context does, with err; the third task
		// fails only after the first has failed and cancelled it.
		waiter := func(err error) func(context.Context) error {
			return func(ctx context.Context) error {
				<-ctx.Done()
				return err
			}
		}
		got := runAllBounded(t, context.Background(),
			waiter(nil),
			func(context.Context) error { defer close(failed); return errFirst },
			func(ctx context.Context) error {
				<-failed
				<-ctx.Done()
				return errLater
			},
			waiter(context.Canceled),
		)
		if got != errFirst {
			t.Fatalf("runAll = %v, want the first error %v", got, errFirst)
		}
	})

	t.Run("every task ends before it returns", func(t *testing.T) {
		ended := make(chan struct{})
		got := runAllBounded(t, context.Background(),
			func(context.Context) error { return errFirst },
			func(ctx context.Context) error {
				<-ctx.Done()
				close(ended)
				return nil
			},
		)
		select {
		case <-ended:
		default:
			t.Fatal("runAll returned while a task was still running")
		}
		if got != errFirst {
			t.Fatalf("runAll = %v, want %v", got, errFirst)
		}
	})

	t.Run("the parent's cancel ends every task and gives nil", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan struct{}, 2)
		task := func(ctx context.Context) error {
			started <- struct{}{}
			<-ctx.Done()
			return nil
		}
		done := make(chan error, 1)
		go func() { done <- runAll(ctx, task, task) }()
		<-started
		<-started
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("runAll = %v, want nil", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("runAll did not return after its context was cancelled")
		}
	})

	t.Run("no task", func(t *testing.T) {
		if err := runAll(context.Background()); err != nil {
			t.Fatalf("runAll() = %v", err)
		}
	})
}
