package config

// CertSource names where the workload certificate comes from.
type CertSource string

// Values of CertSource.
const (
	// SourceCA: a CA signs the agent's CSRs.
	SourceCA CertSource = "ca"
	// SourceFiles: the files mounted in CertDir are served as they are.
	SourceFiles CertSource = "files"
)

// CertPlan is what the agent builds to obtain its workload certificate,
// as decided from the settings by Agent.CertPlan.
type CertPlan struct {
	// Source is where the certificate comes from.
	Source CertSource
	// MountedCertDir is CertDir when Source is SourceFiles, else empty.
	MountedCertDir string
	// Signer is the CA client to build; empty when Source is SourceFiles.
	Signer CAProvider
	// CARootFile is the CA root file the trust bundle (ROOTCA) follows:
	// CARootCert, or empty when the Istio CA is reached in plaintext,
	// where the file verifies nothing and need not exist. With CFSSL it
	// is always kept: the workload roots come from it.
	CARootFile string
}

// CertPlan decides between the mounted files and the CA: with
// --file-mounted-certs auto the files are used when filesPresent(CertDir)
// reports all of them there (cache.MountedCertsPresent).
func (a Agent) CertPlan(filesPresent func(dir string) bool) CertPlan {
	p := CertPlan{Source: SourceCA, Signer: a.CAProvider, CARootFile: a.CARootCert}
	if a.MountedCerts == MountedOn || (a.MountedCerts == MountedAuto && filesPresent(a.CertDir)) {
		p.Source, p.MountedCertDir, p.Signer = SourceFiles, a.CertDir, ""
	}
	if a.CAPlaintext && a.CAProvider != ProviderCFSSL {
		p.CARootFile = ""
	}
	return p
}

// CheckPeers reports whether callers of the SDS socket are checked
// against --allowed-uids/--allowed-gids: when either list is set.
func (a Agent) CheckPeers() bool {
	return len(a.AllowedUIDs) > 0 || len(a.AllowedGIDs) > 0
}
