package model

import (
	"os"
	"testing"
)

func osMkdirTemp() (string, error) { return os.MkdirTemp("", "svdq-model-test-") }

func TestMain(m *testing.M) {
	code := m.Run()
	if tinyFLUX.dir != "" {
		os.RemoveAll(tinyFLUX.dir)
	}
	os.Exit(code)
}
